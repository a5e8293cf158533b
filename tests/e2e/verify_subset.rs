//! `verify --read-data-subset`: a share of the packs read each night (a slice N/M, a random
//! P%, or `auto`, the slice of the day), the rest checked in the storage's listing.

use std::path::{Path, PathBuf};

use crate::common::*;

/// A repository of several backups, each adding a table: several packs. Returns the packs'
/// files.
fn several_packs(label: &str) -> (Ready, Vec<PathBuf>) {
    let ready = Scenario::new(label).crm().init("repo").backup();
    for table in 0..4 {
        ready.source.sql(&format!(
            "CREATE TABLE public.extra_{table} AS SELECT i AS id, md5((i * {}) ::text) AS body \
             FROM generate_series(1, 20000) i",
            table + 3
        ));
        ready.work.backup(&ready.source, &ready.repo);
    }
    let packs = packs_of(&ready.repo);
    assert!(packs.len() >= 5, "expected several packs, found {}", packs.len());
    (ready, packs)
}

fn packs_of(repo: &str) -> Vec<PathBuf> {
    files_under(&Path::new(repo).join("data"))
}

/// The slice of `of` a pack falls in, from 1: its name's first 16 hex digits (8 bytes) as a
/// big-endian number, modulo `of`, plus one.
fn slice_of(pack: &Path, of: u64) -> u64 {
    let name = pack.file_name().unwrap().to_str().unwrap();
    u64::from_str_radix(&name[..16], 16).unwrap() % of + 1
}

/// Flips a byte in the middle of `file` (twice: back as it was).
fn flip_a_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(file, bytes).unwrap();
}

fn verify_subset(work: &Workspace, repo: &str, spec: &str) -> Run {
    work.run(&["verify", "--repo", repo, "--identity", &work.admin_key(), "--read-data-subset", spec, "--json"])
}

/// (slice, packs read, packs) of a subset run's report.
fn subset_of(report: &serde_json::Value) -> (String, u64, u64) {
    let subset = &report["subset"];
    (
        subset["slice"].as_str().unwrap_or_else(|| panic!("no subset in {report}")).to_string(),
        subset["packs_read"].as_u64().unwrap(),
        subset["packs"].as_u64().unwrap(),
    )
}

#[test]
fn the_slices_of_m_find_a_flipped_byte_in_a_pack_exactly_once_and_read_every_pack_once() {
    let (ready, packs) = several_packs("subset_flip");
    let (work, repo) = (&ready.work, &ready.repo);
    let of = 3;
    // Every run with an identity reads the packs holding the snapshots' lists of chunks (it
    // checks them against the indexes): the victim is a pack of table data only, which a slice
    // that leaves it out does not read.
    let victim = packs
        .iter()
        .find(|pack| {
            flip_a_byte(pack);
            let other = slice_of(pack, of) % of + 1;
            let unread = verify_subset(work, repo, &format!("{other}/{of}")).code == 0;
            if !unread {
                flip_a_byte(pack);
            }
            unread
        })
        .expect("a pack of table data only");
    let victim_name = victim.file_name().unwrap().to_str().unwrap();

    let mut read = 0;
    let mut found_by = Vec::new();
    for number in 1..=of {
        let run = verify_subset(work, repo, &format!("{number}/{of}"));
        let report = run.json();
        let (slice, packs_read, total) = subset_of(&report);
        assert_eq!(slice, format!("{number}/{of}"));
        assert_eq!(total, packs.len() as u64, "{report}");
        assert_eq!(packs_read, packs.iter().filter(|p| slice_of(p, of) == number).count() as u64, "{report}");
        read += packs_read;
        let problems = report["problems"].as_array().unwrap();
        match run.code {
            0 => assert!(problems.is_empty(), "{report}"),
            3 => {
                assert_eq!(problems.len(), 1, "{report}");
                assert!(problems[0]["object"].as_str().unwrap().ends_with(victim_name), "{report}");
                found_by.push(number);
            }
            code => panic!("exit {code}: {} {}", run.stdout, run.stderr),
        }
    }
    assert_eq!(read, packs.len() as u64);
    assert_eq!(found_by, vec![slice_of(victim, of)], "the damage is found by its slice alone");
    // The pack is marked, as a full read marks it, so that later backups store its chunks again.
    assert!(Path::new(repo).join("damaged").join(victim_name).exists());

    // The text report names the slice and counts the packs.
    let text = work.run(&["verify", "--repo", repo, "--identity", &work.admin_key(), "--read-data-subset", "1/3"]);
    let expected = packs.iter().filter(|p| slice_of(p, of) == 1).count();
    assert!(text.stdout.contains(&format!("packs slice 1/3 ({expected} of {} read)", packs.len())), "{}", text.stdout);
}

#[test]
fn a_pack_outside_the_slice_that_is_gone_or_cut_short_is_found_by_every_slice() {
    let (ready, packs) = several_packs("subset_listing");
    let (work, repo) = (&ready.work, &ready.repo);
    let (cut, gone) = (&packs[0], &packs[1]);
    let bytes = std::fs::read(cut).unwrap();
    std::fs::write(cut, &bytes[..bytes.len() - 1]).unwrap();
    std::fs::remove_file(gone).unwrap();
    for number in 1..=2 {
        let run = verify_subset(work, repo, &format!("{number}/2"));
        assert_eq!(run.code, 3, "{}", run.stdout);
        let report = run.json();
        let problems: Vec<String> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("{} {}", p["object"], p["problem"]))
            .collect();
        let name = |pack: &PathBuf| pack.file_name().unwrap().to_str().unwrap().to_string();
        assert!(problems.iter().any(|p| p.contains(&name(gone)) && p.contains("missing")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains(&name(cut)) && p.contains("size is")), "{problems:?}");
    }
}

#[test]
fn auto_reads_the_slice_of_today_out_of_30() {
    let (ready, packs) = several_packs("subset_auto");
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86_400;
    let today = days % 30 + 1;
    let report = verify_subset(&ready.work, &ready.repo, "auto").ok().json();
    let (slice, packs_read, total) = subset_of(&report);
    assert_eq!(slice, format!("{today}/30"), "{report}");
    assert_eq!(total, packs.len() as u64);
    assert_eq!(packs_read, packs.iter().filter(|p| slice_of(p, 30) == today).count() as u64);
}

#[test]
fn a_hundred_percent_reads_every_pack_and_a_sample_its_share() {
    let (ready, packs) = several_packs("subset_all");
    let (work, repo) = (&ready.work, &ready.repo);
    let report = verify_subset(work, repo, "100%").ok().json();
    assert_eq!(subset_of(&report), ("100%".to_string(), packs.len() as u64, packs.len() as u64));
    assert!(report["chunks"].as_u64().unwrap() > 0, "{report}");
    let full = work.run(&["verify", "--repo", repo, "--identity", &work.admin_key(), "--read-data", "--json"]).ok();
    assert_eq!(report["chunks"], full.json()["chunks"], "100% proves every chunk a full read does");
    assert!(full.json().get("subset").is_none());

    // 2.5% of a handful of packs: one, rounded up.
    let report = verify_subset(work, repo, "2.5%").ok().json();
    assert_eq!(subset_of(&report), ("2.5%".to_string(), 1, packs.len() as u64));
}

#[test]
fn a_subset_needs_an_admin_identity_and_a_spec_it_understands() {
    let Ready { work, repo, .. } = Scenario::new("subset_bad").sql("CREATE TABLE t (id int)").init("repo").backup();
    let run = work.run(&["verify", "--repo", &repo, "--read-data-subset", "1/2"]);
    let run = run.fails_with(2, "no admin identity for --read-data-subset");
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    for bad in ["0/3", "4/3", "0%", "101%", "x"] {
        let run = verify_subset(&work, &repo, bad);
        let run = run.fails_with(2, &format!("--read-data-subset: {bad:?} is not a subset of the packs"));
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{bad}: {}", run.stderr);
        assert!(run.stdout.trim().is_empty() || run.json()["ok"] == false, "{}", run.stdout);
    }
    let both = work.run(&[
        "verify",
        "--repo",
        &repo,
        "--identity",
        &work.admin_key(),
        "--read-data",
        "--read-data-subset",
        "1/2",
    ]);
    assert_eq!(both.code, 2, "{}", both.stderr);
}
