#!/usr/bin/env python3
"""Memory of the embedded store against history size.

Starts a freshly built `simplechat` (path in argv[1]) on an empty data
directory with the given cache_size_mib (argv[2]), posts MESSAGES messages
of about 2 KB, then walks the whole history back page by page (which reads
every stored page through redb's cache), and prints the server's resident
memory (VmRSS, VmHWM) after each tenth of the posts and after the walk.

    python3 docs/bench/embedded_memory.py target/release/simplechat 64
"""

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

MESSAGES = int(os.environ.get("MESSAGES", "60000"))


def rss(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields["VmRSS"], fields["VmHWM"]


def main():
    binary, cache_mib = sys.argv[1], sys.argv[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tempfile.mkdtemp()
    env = dict(os.environ, SIMPLECHAT_PORT=str(port), SIMPLECHAT_DATA_DIR=data,
               SIMPLECHAT_CACHE_SIZE_MIB=cache_mib, ROCKET_LOG_LEVEL="critical")
    server = subprocess.Popen([binary], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        text = "x" * 1990

        def post(i):
            body = json.dumps({"name": "bench", "text": f"{i} {text}"}).encode()
            req = urllib.request.Request(base + "/api/messages", body,
                                         {"Content-Type": "application/json"})
            urllib.request.urlopen(req).read()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for tenth in range(10):
                n = MESSAGES // 10
                list(pool.map(post, range(tenth * n, (tenth + 1) * n)))
                print(f"cache_size_mib={cache_mib} after {(tenth + 1) * n} posts: "
                      f"VmRSS {rss(server.pid)[0]}, VmHWM {rss(server.pid)[1]}", flush=True)
        before, walked = None, 0
        while True:
            q = "/api/messages?limit=1000" + (f"&before={before}" if before else "")
            page = json.load(urllib.request.urlopen(base + q))
            if not page:
                break
            walked += len(page)
            before = page[0]["id"]
        print(f"cache_size_mib={cache_mib} after walking {walked} messages: "
              f"VmRSS {rss(server.pid)[0]}, VmHWM {rss(server.pid)[1]}", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
