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

    func run(_ arguments: [String], timeout: Double = 30) throws -> (status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = arguments
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(10_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        return (p.terminationStatus,
                String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
                String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
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
        let deadline = Date().addingTimeInterval(10)
        while p.isRunning && Date() < deadline { usleep(10_000) }
        #expect(!p.isRunning, "SIGTERM must stop the server")
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0 != ".datastream" }
        #expect(files.count == 1)
        #expect(files.first.flatMap { FileManager.default.contents(atPath: dir + "/" + $0) }.map { [UInt8]($0) } == data)
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
        #expect(server.storedFiles() == ["j-1.bin", "j.bin"])
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
}
