//! A PostgreSQL server that asks every client for its password in clear, writes down what it
//! was sent, and refuses it: what a client sends as its password, which the real test server
//! (trust authentication) never asks for.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct PasswordCatcher {
    pub port: u16,
    passwords: Arc<Mutex<Vec<String>>>,
}

impl PasswordCatcher {
    pub fn start() -> PasswordCatcher {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let passwords = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&passwords);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                Self::ask(stream, &seen);
            }
        });
        PasswordCatcher { port, passwords }
    }

    /// A URL for user `backup`, database `crm` on this server.
    pub fn url(&self) -> String {
        format!("postgres://backup@127.0.0.1:{}/crm", self.port)
    }

    /// The passwords sent so far, in order. Each is written down before the client is refused,
    /// so once a client has failed, what it sent is here.
    pub fn passwords(&self) -> Vec<String> {
        self.passwords.lock().unwrap().clone()
    }

    /// Reads the startup (after refusing TLS), asks for a cleartext password, writes it down,
    /// refuses it.
    fn ask(mut stream: TcpStream, seen: &Mutex<Vec<String>>) -> Option<()> {
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let read_message = |stream: &mut TcpStream| -> Option<Vec<u8>> {
            let mut length = [0; 4];
            stream.read_exact(&mut length).ok()?;
            let mut body = vec![0; (u32::from_be_bytes(length) as usize).checked_sub(4)?];
            stream.read_exact(&mut body).ok()?;
            Some(body)
        };
        let mut startup = read_message(&mut stream)?;
        if startup.get(..4) == Some(&80_877_103_u32.to_be_bytes()) {
            stream.write_all(b"N").ok()?; // an SSLRequest: no TLS here
            startup = read_message(&mut stream)?;
        }
        let _ = startup;
        stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).ok()?; // AuthenticationCleartextPassword
        let mut tag = [0; 1];
        stream.read_exact(&mut tag).ok()?;
        let body = read_message(&mut stream)?;
        if tag[0] == b'p' {
            let password = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(&body)).into_owned();
            seen.lock().unwrap().push(password);
        }
        let fields = b"SFATAL\0C28P01\0Mpassword authentication failed (test server)\0\0";
        let mut error = vec![b'E'];
        error.extend_from_slice(&(u32::try_from(fields.len()).unwrap() + 4).to_be_bytes());
        error.extend_from_slice(fields);
        let _ = stream.write_all(&error);
        Some(())
    }
}
