import DataStream
import DataStreamCore
import Foundation
import Glibc
import Testing

/// The `datastream` executable, as users and scripts run it (built beside the test binary).
struct CommandLineTests {
    static var binary: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("datastream").path
    }

    func run(_ arguments: [String], timeout: Double = 30, environment: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = arguments
        if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let output = PipeCollector(out), errors = PipeCollector(err)
        waitForExit(p, seconds: timeout)
        return (p.terminationStatus, output.all(), errors.all())
    }

    /// docs/CLI.md is the binary's own --help for every subcommand (scripts/cli-doc writes it):
    /// a flag added, removed or reworded without regenerating it fails here.
    @Test func cliReferenceMatchesHelp() throws {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/CLI.md").standardized.path
        let text = try String(contentsOfFile: docs, encoding: .utf8)
        for sub in ["", "serve", "send", "bench"] {
            // The help wraps at the terminal width: scripts/cli-doc fixes it at 80 columns too.
            let help = try run(sub.isEmpty ? ["--help"] : [sub, "--help"], environment: ["COLUMNS": "80"])
            #expect(help.status == 0)
            let heading = "## datastream" + (sub.isEmpty ? "" : " " + sub) + "\n\n```text\n"
            guard let start = text.range(of: heading), let end = text.range(of: "```\n", range: start.upperBound..<text.endIndex) else {
                Issue.record("docs/CLI.md has no section for \(sub.isEmpty ? "datastream" : sub); run scripts/cli-doc")
                continue
            }
            #expect(String(text[start.upperBound..<end.lowerBound]) == help.stdout, "docs/CLI.md is stale for '\(sub)': run scripts/cli-doc")
        }
    }

    @Test func binaryIsBuilt() {
        #expect(FileManager.default.isExecutableFile(atPath: Self.binary), "run `swift build` before `swift test` (scripts/test does)")
    }

    @Test func servePrintsItsPortFirstAndStopsCleanlyOnSIGTERM() throws {
        let dir = BackgroundServer.temporaryDirectory() + "/in"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = ["serve", "--port", "0", "--dir", dir, "--log-level", "warning"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        // The first line of output names the bound port.
        var line = [UInt8]()
        let reader = out.fileHandleForReading
        while line.last != 0x0A {
            let byte = reader.readData(ofLength: 1)
            if byte.isEmpty { break }
            line += byte
        }
        let text = String(decoding: line, as: UTF8.self)
        #expect(text.hasPrefix("listening tcp 127.0.0.1:"))
        guard let port = Int(text.split(separator: ":").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") else {
            kill(p.processIdentifier, SIGKILL)
            Issue.record("no port in \(text)")
            return
        }
        let data = content(5, count: 123_456)
        let client = try BlockingClient(port: port)
        client.send(Array(String(data.count).utf8) + data)
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        kill(p.processIdentifier, SIGTERM)
        #expect(waitForExit(p, seconds: 10), "SIGTERM must stop the server")
        #expect(p.terminationStatus == 0)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0 != ".datastream" }
        #expect(files.count == 1)
        #expect(files.first.flatMap { FileManager.default.contents(atPath: dir + "/" + $0) }.map { [UInt8]($0) } == data)
    }

    /// Threads of a `serve` process once it has stored an upload (libuv starts its threadpool,
    /// all threads at once, at the first file request).
    private func threadsAfterAnUpload(_ arguments: [String], shellPrefix: String = "") throws -> Int {
        let server = try ServeProcess(arguments: arguments + ["--log-level", "warning"], shellPrefix: shellPrefix)
        let data = content(9, count: 10_000)
        let client = try BlockingClient(port: server.port)
        client.send(Array(String(data.count).utf8) + data)
        client.shutdownWrite()
        _ = client.readUntilEOF()
        #expect(waitUntil { !server.storedFiles().isEmpty })
        #expect(server.contents(server.storedFiles().first ?? "") == data)
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(server.process.processIdentifier)/task").count
        _ = server.stop()
        return tasks
    }

    @Test func threadpoolSizeFlagDefaultAndEnvironment() throws {
        let one = try threadsAfterAnUpload(["--threadpool-size", "1"])
        #expect(try threadsAfterAnUpload(["--threadpool-size", "3"]) == one + 2)
        // Without the flag: one thread per core, at least 2; with --fsync twice that, at least 4.
        let cores = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        #expect(try threadsAfterAnUpload([]) == one + max(2, cores) - 1)
        #expect(try threadsAfterAnUpload(["--fsync"]) == one + max(4, 2 * cores) - 1)
        // UV_THREADPOOL_SIZE from the environment is kept when the flag is not given.
        #expect(try threadsAfterAnUpload([], shellPrefix: "export UV_THREADPOOL_SIZE=5") == one + 4)
        let bad = try run(["serve", "--port", "0", "--threadpool-size", "0"])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("--threadpool-size must be a whole number from 1 to 1024, got '0'"))
    }

    @Test func sendWithJSONAndExitStatus() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let a = writeTemporaryFile(content(6, count: 5000), name: "j.bin")
        let ok = try run(["send", a, "--to", "127.0.0.1:\(server.port)", "--json"])
        #expect(ok.status == 0)
        let report = try JSONSerialization.jsonObject(with: Data(ok.stdout.utf8)) as? [String: Any]
        #expect(report?["ok"] as? Bool == true)
        let files = report?["files"] as? [[String: Any]]
        #expect(files?.first?["storedName"] as? String == "j.bin")
        #expect(files?.first?["digest"] as? String == Digests.compute(.xxh3_128, content(6, count: 5000)).hexString)
        // A missing file among good ones: the good one is stored, the exit status says failure.
        let bad = try run(["send", "/nonexistent/file", a, "--to", "127.0.0.1:\(server.port)"])
        #expect(bad.status == 1)
        #expect(bad.stdout.contains("FAILED  /nonexistent/file"))
        // `a` again is the same upload (same path, size and time): answered with its name, not stored twice.
        #expect(bad.stdout.contains("ok      \(a): 5000 bytes as j.bin (already on the server, nothing sent)"), "\(bad.stdout)")
        #expect(server.storedFiles() == ["j.bin"])
    }

    @Test func startupErrorsAreOneClearLine() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let inUse = try run(["serve", "--port", "\(server.port)", "--dir", BackgroundServer.temporaryDirectory()])
        #expect(inUse.status == 1)
        #expect(inUse.stderr == "datastream: cannot listen on 127.0.0.1:\(server.port): the port is in use\n")
        let file = writeTemporaryFile([1], name: "not-a-dir")
        let badDir = try run(["serve", "--port", "0", "--dir", file])
        #expect(badDir.status == 1)
        #expect(badDir.stderr.hasPrefix("datastream: cannot use directory \(file)"))
    }

    @Test func sendOverUDPWithJSONAndTheSeedMode() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let bytes = content(7, count: 300_000)
        let a = writeTemporaryFile(bytes, name: "u.bin")
        let ok = try run(["send", "--udp", "--chunk-size", "8192", a, "--to", "127.0.0.1:\(server.port)", "--json"])
        #expect(ok.status == 0, "\(ok.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(ok.stdout.utf8)) as? [String: Any]
        #expect(report?["ok"] as? Bool == true)
        #expect((report?["files"] as? [[String: Any]])?.first?["storedName"] as? String == "u.bin")
        #expect((report?["udp"] as? [String: Any])?["datagrams"] as? Int ?? 0 >= 37)
        let seed = try run(["send", "--udp", "--seed-protocol", "--seed-pause", "0.1", a, "--to", "127.0.0.1:\(server.port)"])
        #expect(seed.status == 0)
        #expect(server.eventually { server.storedFiles().count == 2 })
        #expect(server.storedFiles().compactMap(server.contents).allSatisfy { $0 == bytes })
        let badChunk = try run(["send", "--udp", "--chunk-size", "100", a, "--to", "127.0.0.1:\(server.port)"])
        #expect(badChunk.status == 1)
        #expect(badChunk.stderr.contains("--chunk-size must be a whole number from 512 to 16384, got '100'"))
    }

    @Test func servePrintsTheUDPLineUnlessUDPIsOff() throws {
        func firstLines(_ arguments: [String]) throws -> [String] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Self.binary)
            p.arguments = ["serve", "--port", "0", "--dir", BackgroundServer.temporaryDirectory(), "--log-level", "warning"] + arguments
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            let output = PipeCollector(out)
            // Once the server answers a client, its start-up lines are all written.
            #expect(output.waitFor("listening tcp"))
            if let port = output.text.split(separator: "\n").first?.split(separator: ":").last.flatMap({ Int($0) }),
               let client = try? BlockingClient(port: port) {
                client.send(Wire.hello())
                #expect(client.readFrame()?.type == .welcome)
            }
            kill(p.processIdentifier, SIGTERM)
            waitForExit(p)
            return output.all().split(separator: "\n").map(String.init)
        }
        let both = try firstLines([])
        #expect(both.count == 2)
        let tcpPort = both.first?.split(separator: ":").last.map(String.init)
        #expect(both.first?.hasPrefix("listening tcp 127.0.0.1:") == true)
        #expect(both.last == "listening udp 127.0.0.1:\(tcpPort ?? "?")")
        #expect(try firstLines(["--no-udp"]).count == 1)
        // An explicit UDP port (taken here from a socket bound to port 0 and closed).
        // Closed exactly once: a second close could hit a descriptor another test's loop had
        // been given meanwhile, and libuv aborts on that.
        let (probe, free) = boundLoopbackSocket(SOCK_DGRAM)
        close(probe)
        let explicit = try firstLines(["--udp-port", "\(free)"])
        #expect(explicit.last == "listening udp 127.0.0.1:\(free)")
    }

    @Test func benchRunsVerifiesAndReportsAsJSON() throws {
        let server = try BackgroundServer()
        let r = try run(["bench", "--to", "127.0.0.1:\(server.port)", "--uploads", "20", "--concurrency", "5",
                         "--size", "1KiB-64KiB", "--seed", "3", "--verify", server.directory, "--json"])
        server.stop()
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(json["uploadsCompleted"] as? Int == 20)
        #expect(json["uploadsFailed"] as? Int == 0)
        let latency = try #require(json["latencyMilliseconds"] as? [String: Double])
        #expect(Set(latency.keys) == ["p50", "p90", "p99", "max"])
        #expect((latency["p50"] ?? 0) > 0 && (latency["p50"] ?? 0) <= (latency["max"] ?? 0))
        let verification = try #require(json["verification"] as? [String: Any])
        #expect(verification["verified"] as? Int == 20)
        #expect(verification["ok"] as? Bool == true)
    }

    @Test func benchTableAndExitStatusWhenUploadsFail() throws {
        let server = try BackgroundServer()
        let ok = try run(["bench", "--to", "127.0.0.1:\(server.port)", "--uploads", "4", "--size", "2KiB"])
        server.stop()
        #expect(ok.status == 0)
        #expect(ok.stdout.contains("uploads       4 done, 0 failed"))
        #expect(ok.stdout.contains("latency ms    p50"))
        #expect(ok.stdout.contains("errors        none"))
        // The server is gone: every upload fails to connect, and the status says so.
        let failed = try run(["bench", "--to", "127.0.0.1:\(server.port)", "--uploads", "3"])
        #expect(failed.status == 1)
        #expect(failed.stdout.contains("connect 3"))
    }

    @Test func benchArgumentErrorsAreOneClearLine() throws {
        let cases: [([String], String)] = [
            (["--to", "nowhere"], "--to must be HOST:PORT"),
            (["--to", "127.0.0.1:9", "--size", "64KiB-4KiB"], "the low end is above the high end"),
            (["--to", "127.0.0.1:9", "--size", "12 parsecs"], "unknown unit"),
            (["--to", "127.0.0.1:9", "--protocol", "carrier-pigeon"], "--protocol must be one of seed, native"),
            (["--to", "127.0.0.1:9", "--concurrency", "0"], "--concurrency must be a whole number from 1 to"),
            (["--to", "127.0.0.1:9", "--source-addresses", "0"], "--source-addresses must be a whole number from 1 to 254"),
            (["--to", "127.0.0.1:70000"], "--to's port must be a whole number from 1 to 65535, got '70000'"),
        ]
        for (arguments, message) in cases {
            let r = try run(["bench"] + arguments)
            #expect(r.status == 1, "\(arguments)")
            #expect(r.stderr.contains(message), "\(arguments): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(arguments): \(r.stderr)")
        }
    }

    /// Every numeric flag of every subcommand goes through one validation path: a port that would
    /// wrap, a time that is infinite, huge or not a number, a negative count: each is refused at
    /// start with one line naming the flag and exit status 1, never accepted to trap later.
    @Test func everyNumericFlagIsRangeChecked() throws {
        let serve = ["--port", "--udp-port", "--max-name-length", "--max-connections", "--max-connections-per-address",
                     "--header-timeout", "--idle-timeout", "--drain-timeout", "--partial-max-age", "--udp-idle-timeout",
                     "--udp-max-sessions", "--udp-max-sessions-per-address", "--udp-max-seed-sessions", "--udp-max-seed-sessions-per-address", "--threadpool-size",
                     "--udp-receive-buffer", "--udp-window", "--udp-memory", "--max-file-size", "--min-free-space",
                     "--max-partials-per-address", "--max-partial-bytes-per-address", "--max-partials", "--max-partial-bytes"]
        let send = ["--chunk-size", "--max-rate", "--seed-pause"]
        let bench = ["--concurrency", "--uploads", "--duration", "--seed", "--timeout", "--source-addresses", "--rate", "--threads"]
        let dir = BackgroundServer.temporaryDirectory()
        let file = writeTemporaryFile([1], name: "flags.bin")
        var checked = 0
        for value in ["inf", "nan", "1e300", "-1", "70000000000000000000", "12abc"] {
            for flagName in serve {
                let r = try run(["serve", "--dir", dir, flagName, value])
                #expect(r.status == 1, "serve \(flagName) \(value): \(r.stderr)")
                #expect(r.stderr.hasPrefix("datastream: \(flagName) must be ") && r.stderr.hasSuffix("got '\(value)'\n"), "serve \(flagName) \(value): \(r.stderr)")
                checked += 1
            }
            for flagName in send {
                let r = try run(["send", file, "--to", "127.0.0.1:9", "--udp", flagName, value])
                #expect(r.status == 1, "send \(flagName) \(value): \(r.stderr)")
                #expect(r.stderr.hasPrefix("datastream: \(flagName) must be "), "send \(flagName) \(value): \(r.stderr)")
                checked += 1
            }
            for flagName in bench {
                let r = try run(["bench", "--to", "127.0.0.1:9", flagName, value])
                #expect(r.status == 1, "bench \(flagName) \(value): \(r.stderr)")
                #expect(r.stderr.hasPrefix("datastream: \(flagName) must be "), "bench \(flagName) \(value): \(r.stderr)")
                checked += 1
            }
        }
        #expect(checked == 6 * 35)
        // Ports do not wrap: 65536 and 70000 are refused, not bound as 0 or 4464.
        for port in ["65536", "70000"] {
            let r = try run(["serve", "--dir", dir, "--port", port])
            #expect(r.status == 1)
            #expect(r.stderr == "datastream: --port must be a whole number from 0 to 65535, got '\(port)'\n")
        }
    }

    /// `--host` takes names and bracketed IPv6: `localhost` is resolved, and on `[::1]` every
    /// transport works end to end (seed and native TCP, native and seed UDP), each file stored
    /// byte for byte.
    @Test func hostNamesAndIPv6ForEveryTransport() throws {
        let named = try ServeProcess(arguments: ["--host", "localhost"])
        #expect(named.stop()?.status == 0)
        let server = try ServeProcess(arguments: ["--host", "[::1]", "--log-level", "warning"], udp: true)
        let to = "[::1]:\(server.port)"
        var expected: [String: [UInt8]] = [:]
        for (i, mode) in [[], ["--seed-protocol"], ["--udp"], ["--udp", "--seed-protocol", "--seed-pause", "0.05"]].enumerated() {
            let data = content(60 + i, count: 50_000 + i)
            let path = writeTemporaryFile(data, name: "v6-\(i).bin")
            let r = try run(["send", path, "--to", to] + mode)
            #expect(r.status == 0, "\(mode): \(r.stderr) \(r.stdout)")
            expected["v6-\(i).bin"] = data
        }
        #expect(server.eventually { server.storedFiles().count == 4 })
        let stored = server.storedFiles().compactMap(server.contents)
        #expect(Set(stored) == Set(expected.values))
        // The native uploads kept their names.
        #expect(server.contents("v6-0.bin") == expected["v6-0.bin"])
        #expect(server.contents("v6-2.bin") == expected["v6-2.bin"])
        #expect(server.stop()?.status == 0)
    }

    /// A receiver that hangs up on every upload: the generator's writes hit closed sockets. The
    /// process must count the failures and exit 1, not die of SIGPIPE.
    @Test func benchSurvivesAReceiverThatHangsUp() throws {
        let (fd, port) = boundLoopbackSocket(SOCK_STREAM)
        #expect(listen(fd, 64) == 0)
        let hangUp = Thread {
            // Accept (bounded), read a little, close: the rest of each upload meets a closed socket.
            var buffer = [UInt8](repeating: 0, count: 4096)
            for _ in 0..<8 {
                let c = accept(fd, nil, nil)
                if c < 0 { return }
                _ = recv(c, &buffer, buffer.count, 0)
                close(c)
            }
        }
        hangUp.start()
        let r = try run(["bench", "--to", "127.0.0.1:\(port)", "--uploads", "8", "--concurrency", "2", "--size", "8MiB", "--timeout", "5"])
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stdout.contains("uploads       0 done, 8 failed"), "\(r.stdout)")
    }
}
