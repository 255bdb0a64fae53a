#!/usr/bin/env python3
"""A fleet of DataStream nodes behind HAProxy (docs/SCALE.md), with kill -9 of a node.

HAProxy (Debian's 2.6) takes seed and native uploads in TCP mode and the web routes in HTTP
mode, and opens every connection to a node with a PROXY v2 header (its health checks send one
too). NODES `datastream serve` processes share one target directory and take PROXY headers from
127.0.0.1 only. Checked:
  1. UPLOADS native uploads through HAProxy from 16 loopback client addresses
     (`datastream bench`), every one verified byte for byte;
  2. a node killed with SIGKILL while `datastream send` processes upload through HAProxy: what
     was cut is sent again through HAProxy, resumes on another node from the shared partials,
     and every file ends stored once, byte-identical;
  3. the per-address cap (--max-connections-per-address 8) counts the client's address, not
     HAProxy's: one client over it is refused while another is served;
  4. a PUT through the HTTP frontend is stored, and /metrics answers through it; so is one over
     TLS, which HAProxy terminates with a self-signed certificate;
  5. a node put in drain through HAProxy's admin socket gets no new connections.

Prints what it found; exit status 1 on any failure. Usage:
  scripts/faults/haproxy-fleet.py [--uploads 1000] [--nodes 3] [--binary PATH]
"""
import argparse, json, os, random, shutil, signal, socket, ssl, struct, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleet_common import check_final_names, free_port, make_sources, outcomes, partial_name, send, start_node  # noqa: E402

HELLO = bytes([0x01]) + struct.pack(">I", 8) + b"DSTM" + bytes([1, 0, 0, 0])
WELCOME, ERROR = 0x02, 0x7F


def haproxy_config(work, tcp_port, http_port, cap_port, tls_port, nodes):
    servers = "\n".join(f"    server n{i} 127.0.0.1:{p} send-proxy-v2 check check-send-proxy inter 300 fall 2 rise 1"
                        for i, p in enumerate(nodes))
    return f"""global
    stats socket {work}/admin.sock mode 600 level admin
    maxconn 4000
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
frontend uploads
    mode tcp
    bind 127.0.0.1:{tcp_port}
    default_backend nodes
frontend web
    mode http
    bind 127.0.0.1:{http_port}
    default_backend web
frontend web-tls
    mode http
    bind 127.0.0.1:{tls_port} ssl crt {work}/haproxy.pem
    default_backend web
frontend one
    mode tcp
    bind 127.0.0.1:{cap_port}
    default_backend first
backend nodes
    mode tcp
    balance leastconn
{servers}
backend web
    mode http
{servers}
backend first
    mode tcp
{servers.splitlines()[0]}
"""


def admin(work, command):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(f"{work}/admin.sock")
        s.sendall(command.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out.decode()


def wait_until(condition, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def hello_from(source, port):
    """A native HELLO from a client address; the answer's frame type (WELCOME or ERROR)."""
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(HELLO)
    head = s.recv(1)
    return s, head[0] if head else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploads", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--binary", default=".build/release/datastream")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.nodes < 2 or a.uploads < 1:
        raise SystemExit("haproxy-fleet: --nodes >= 2, --uploads >= 1")
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="datastream-fleet-")
    target = os.path.join(work, "in")
    env = dict(os.environ, DATASTREAM_STATE_DIR=os.path.join(work, "state"))
    log = open(os.path.join(work, "nodes.log"), "ab")
    failures = []
    ports = [free_port() for _ in range(a.nodes)]
    node_args = ["--proxy-protocol", "127.0.0.1", "--max-connections-per-address", "8"]
    nodes = [start_node(a.binary, target, p, log, node_args) for p in ports]
    tcp_port, http_port, cap_port, tls_port = free_port(), free_port(), free_port(), free_port()
    # A self-signed certificate for the TLS frontend (HAProxy wants key and certificate in one file).
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem"], check=True, capture_output=True)
    with open(f"{work}/haproxy.pem", "w") as f:
        f.write(open(f"{work}/cert.pem").read() + open(f"{work}/key.pem").read())
    with open(os.path.join(work, "haproxy.cfg"), "w") as f:
        f.write(haproxy_config(work, tcp_port, http_port, cap_port, tls_port, ports))
    proxy = subprocess.Popen(["haproxy", "-f", os.path.join(work, "haproxy.cfg"), "-db"],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "haproxy.log"), "ab"))
    try:
        def up():
            try:
                state = admin(work, "show stat")
            except OSError:
                return False
            return sum(1 for line in state.splitlines() if line.startswith("nodes,n") and ",UP," in line) == a.nodes
        if not wait_until(up):
            state = admin(work, "show stat") if os.path.exists(f"{work}/admin.sock") else "(no admin socket)"
            raise SystemExit("haproxy-fleet: HAProxy did not see every node up:\n" + "\n".join(
                ",".join(line.split(",")[:2] + line.split(",")[17:18] + line.split(",")[36:38]) for line in state.splitlines()))

        # 1. Native uploads through HAProxy from 16 client addresses, verified.
        bench = subprocess.run([a.binary, "bench", "--to", f"127.0.0.1:{tcp_port}", "--protocol", "native",
                                "--uploads", str(a.uploads), "--concurrency", "48", "--size", "1KiB-256KiB",
                                "--seed", str(a.seed), "--verify", target, "--json"], capture_output=True, env=env)
        report = json.loads(bench.stdout or b"{}")
        v = report.get("verification") or {}
        print(f"1. {report.get('uploadsCompleted')} of {a.uploads} native uploads through HAProxy, "
              f"{v.get('verified')} verified, {report.get('uploadsFailed')} failed", flush=True)
        if report.get("uploadsCompleted") != a.uploads or v.get("verified") != a.uploads:
            failures.append("bench through HAProxy")

        # 2. kill -9 of a node under `datastream send` through HAProxy; the cut ones go again.
        # A tenth of them large enough (16 MiB) to be cut mid-way on loopback.
        sources = make_sources(rng, os.path.join(work, "src"), "fleet", 60, lambda g: 16 << 20 if g.random() < 0.1 else g.randint(1, 512 << 10))
        names = sorted(sources)
        senders = [send(a.binary, tcp_port, [sources[n][0] for n in names[k::6]], env) for k in range(6)]
        partial_dir = os.path.join(target, ".datastream", "partial")
        wait_until(lambda: any(p.name.endswith(".part") and p.stat().st_size > 0 for p in os.scandir(partial_dir)))
        victim = rng.randrange(a.nodes)
        nodes[victim].send_signal(signal.SIGKILL)
        nodes[victim].wait()
        confirmed = {os.path.basename(o["path"]) for s in senders for o in outcomes(s) if o.get("ok")}
        held = {}
        for p in os.scandir(partial_dir):
            if p.name.endswith(".part") and p.stat().st_size > 0 and (n := partial_name(os.path.join(partial_dir, p.name[:-5] + ".meta"))):
                held[n] = p.stat().st_size
        rest = [n for n in names if n not in confirmed]
        wait_until(lambda: f"nodes,n{victim}," in admin(work, "show stat") and any(
            line.startswith(f"nodes,n{victim},") and ",DOWN" in line for line in admin(work, "show stat").splitlines()))
        again = [send(a.binary, tcp_port, [sources[n][0] for n in rest[k::3]], env) for k in range(3) if rest[k::3]]
        resumed = failed = 0
        for s in again:
            for o in outcomes(s):
                if not o.get("ok"):
                    failed += 1
                elif os.path.basename(o["path"]) in held and o.get("resumedFrom", 0) >= held[os.path.basename(o["path"])]:
                    resumed += 1
        bad, stored = check_final_names(target, sources, prefix="fleet_")
        missing = [n for n in names if n not in stored]
        twice = sum(len(v) - 1 for v in stored.values())
        print(f"2. node {victim} killed: {len(confirmed)} of {len(names)} confirmed before; {len(rest)} sent again through "
              f"HAProxy, {failed} failed; {resumed} of {len(held)} held partials resumed on another node; "
              f"{len(bad)} bad, {len(missing)} missing, {twice} stored twice", flush=True)
        if failed or bad or missing or twice or resumed != len(held):
            failures.append("kill -9 of a node")
        nodes[victim] = start_node(a.binary, target, ports[victim], log, node_args)
        # Back in every backend before the next checks (the cap's goes to n0 alone).
        if not wait_until(lambda: sum(1 for line in admin(work, "show stat").splitlines()
                                      if line.startswith(("nodes,n", "web,n", "first,n")) and ",UP," in line) == 2 * a.nodes + 1):
            failures.append(f"node {victim} back up in HAProxy")

        # 3. The cap of 8 connections per address counts the client's address.
        held_open = [hello_from("127.0.0.9", cap_port) for _ in range(8)]
        over = hello_from("127.0.0.9", cap_port)
        other = hello_from("127.0.0.10", cap_port)
        answers = [t for _, t in held_open] + [over[1], other[1]]
        print(f"3. per-address cap 8 through HAProxy: 127.0.0.9 got WELCOME {answers[:8].count(WELCOME)} times, then "
              f"{'ERROR' if answers[8] == ERROR else answers[8]}; 127.0.0.10 got {'WELCOME' if answers[9] == WELCOME else answers[9]}", flush=True)
        if answers != [WELCOME] * 8 + [ERROR, WELCOME]:
            failures.append("per-address cap behind HAProxy")
        for s, _ in held_open + [over, other]:
            s.close()

        # 4. The web routes through the HTTP frontend.
        body = rng.randbytes(300_000)
        put = urllib.request.Request(f"http://127.0.0.1:{http_port}/through-haproxy.bin", data=body, method="PUT")
        status = urllib.request.urlopen(put, timeout=30).status
        with open(os.path.join(target, "through-haproxy.bin"), "rb") as f:
            same = f.read() == body
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30).read().decode()
        print(f"4. PUT through HAProxy's HTTP frontend: {status}, stored intact: {same}; /metrics: "
              f"{'datastream_uploads_stored_total' in metrics}", flush=True)
        if status != 201 or not same or "datastream_uploads_stored_total" not in metrics:
            failures.append("HTTP through HAProxy")
        # ... and over TLS, which HAProxy terminates (the client checks the self-signed
        # certificate against itself).
        context = ssl.create_default_context(cafile=f"{work}/cert.pem")
        secret = rng.randbytes(200_000)
        put = urllib.request.Request(f"https://127.0.0.1:{tls_port}/over-tls.bin", data=secret, method="PUT")
        status = urllib.request.urlopen(put, timeout=30, context=context).status
        with open(os.path.join(target, "over-tls.bin"), "rb") as f:
            same = f.read() == secret
        print(f"4. PUT over TLS terminated by HAProxy: {status}, stored intact: {same}", flush=True)
        if status != 201 or not same:
            failures.append("TLS through HAProxy")

        # 5. Drain a node through the admin socket: new connections go to the others.
        admin(work, "set server nodes/n0 state drain")
        before = admin(work, "show stat")
        sessions = lambda text: int(next(l for l in text.splitlines() if l.startswith("nodes,n0,")).split(",")[7])
        subprocess.run([a.binary, "bench", "--to", f"127.0.0.1:{tcp_port}", "--uploads", "60", "--concurrency", "6",
                        "--size", "4KiB", "--seed", str(a.seed + 1)], capture_output=True, env=env)
        drained = sessions(admin(work, "show stat")) == sessions(before)
        print(f"5. n0 in drain: its sessions total stayed at {sessions(before)} while 60 more uploads went through: {drained}", flush=True)
        if not drained:
            failures.append("drain through the admin socket")
    finally:
        proxy.terminate()
        proxy.wait()
        for n in nodes:
            if n.poll() is None:
                n.send_signal(signal.SIGTERM)
        for n in nodes:
            n.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print("summary: " + ("all good" if not failures else "FAILED: " + ", ".join(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
