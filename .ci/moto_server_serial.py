"""moto's S3 server, answering one request at a time.

moto checks a PUT's If-None-Match / If-Match and then stores, and its `moto_server` runs every
request on its own thread: two conditional PUTs of one name that arrive together can both be
let through (the lock test's eight concurrent takers saw two winners in CI). S3 decides a
conditional write atomically. Here every request runs under one lock, so moto's check and
store are one step, as S3's are; the tests' requests still arrive concurrently over their own
connections.

Usage: python3 .ci/moto_server_serial.py PORT
"""

import os
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    port = int(sys.argv[1])
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def serial(environ, start_response):
        with one_at_a_time:
            # The whole answer inside the lock: moto may do its work while it is iterated.
            return list(app(environ, start_response))

    run_simple("127.0.0.1", port, serial, threaded=True)


if __name__ == "__main__":
    main()
