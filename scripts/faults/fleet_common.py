"""What the fault runs with several DataStream processes share: starting nodes and senders,
reading the senders' reports, and checking every file under a final name against its source."""
import hashlib, json, os, socket, subprocess


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(binary, directory, port, log, extra=()):
    p = subprocess.Popen([binary, "serve", "--port", str(port), "--dir", directory, "--no-udp",
                          "--log-level", "warning", "--min-free-space", "0", *extra],
                         stdout=subprocess.PIPE, stderr=log)
    line = p.stdout.readline().decode()
    if not line.startswith("listening tcp"):
        raise SystemExit(f"node did not start: {line!r}")
    return p


def send(binary, port, files, env):
    return subprocess.Popen([binary, "send", *files, "--to", f"127.0.0.1:{port}", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)


def outcomes(proc):
    out, _ = proc.communicate()
    try:
        return json.loads(out.decode() or "{}").get("files", [])
    except json.JSONDecodeError:
        return []  # killed: nothing confirmed by this sender


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_final_names(target, sources, prefix=""):
    """Files under final names (those beginning with `prefix`): each must be the source its name
    comes from, and one each."""
    bad, stored = [], {}
    for name in os.listdir(target):
        if name == ".datastream" or not name.startswith(prefix):
            continue
        base = name
        stem, dot, ext = name.rpartition(".")
        if stem and "-" in stem and stem.rsplit("-", 1)[1].isdigit():
            base = stem.rsplit("-", 1)[0] + dot + ext  # NAME-1.bin: a second copy of NAME.bin
        src = sources.get(base)
        path = os.path.join(target, name)
        if src is None or os.path.getsize(path) != src[1] or digest(path) != src[2]:
            bad.append(name)
        else:
            stored.setdefault(base, []).append(name)
    return bad, stored


def partial_name(meta_path):
    """The client's file name a partial's metadata records (docs/PROTOCOL.md), or None."""
    try:
        lines = open(meta_path, "rb").read().decode().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("name "):
            return bytes.fromhex(line[5:]).decode()
    return None


def make_sources(rng, directory, prefix, count, size):
    """`count` files of random bytes named PREFIX_I.bin in `directory` (`size(rng)` bytes each):
    name -> (path, size, sha256)."""
    os.makedirs(directory, exist_ok=True)
    sources = {}
    for i in range(count):
        name = f"{prefix}_{i}.bin"
        data = rng.randbytes(size(rng))
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
        sources[name] = (os.path.join(directory, name), len(data), hashlib.sha256(data).hexdigest())
    return sources
