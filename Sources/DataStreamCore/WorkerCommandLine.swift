/// The command line a `serve --workers N` supervisor gives each worker: its own, less
/// `--workers`, with the ports it reserved and the worker's slot.
public enum WorkerCommandLine {
    /// Options the supervisor decides for its workers (dropped from the original, with their
    /// values, in either form: `--port 9000` or `--port=9000`).
    static let decided: Set<String> = ["--workers", "--port", "--udp-port", "--worker-slot"]

    /// `original` is the supervisor's arguments after the program name (`serve ...`).
    public static func arguments(from original: [String], port: Int, udpPort: Int?, slot: Int) -> [String] {
        var out: [String] = []
        var skipValue = false
        for argument in original {
            if skipValue { skipValue = false; continue }
            if argument == "--" { break }
            let name = argument.split(separator: "=", maxSplits: 1).first.map(String.init) ?? argument
            if decided.contains(name) {
                skipValue = !argument.contains("=")
                continue
            }
            out.append(argument)
        }
        out += ["--port", String(port), "--worker-slot", String(slot)]
        if let udpPort { out += ["--udp-port", String(udpPort)] }
        return out
    }
}
