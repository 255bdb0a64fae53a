import DataStream
import DataStreamCore
import Foundation
import Glibc
import Testing

/// `--on-stored`: a real shell command run through uv_spawn for every stored upload.
struct CompletionHookTests {
    /// JSON objects the hooks wrote into `directory` (one file each).
    func hookOutputs(_ directory: String) -> [[String: Any]] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("hook-") }.compactMap { name in
            FileManager.default.contents(atPath: directory + "/" + name).flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
        }
    }

    @Test func everyStoredUploadRunsTheHookWithItsJSONAndNoBrokenOneDoes() throws {
        let out = BackgroundServer.temporaryDirectory()
        let server = try BackgroundServer { $0.udpEnabled = false; $0.onStored = "f=$(mktemp \(out)/tmp-XXXXXX); cat > \"$f\" && mv \"$f\" \"\(out)/hook-${f##*/}\"" }
        defer { server.stop() }
        let native = content(1, count: 50_000)
        #expect(try sendFiles([writeTemporaryFile(native, name: "n.bin")], port: server.port).allSatisfy(\.succeeded))
        // A seed upload cut short: stored never, so no hook.
        let cut = try BlockingClient(port: server.port)
        cut.send(Array("1000abc".utf8))
        cut.shutdownWrite()
        _ = cut.readUntilEOF()
        let put = try BlockingClient(port: server.port)
        put.send(Array("PUT /p.txt HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".utf8))
        _ = put.readUntilEOF()
        #expect(waitUntil { hookOutputs(out).count == 2 && server.onLoop { $0.statistics.hooksSucceeded } == 2 })
        #expect(server.onLoop { $0.statistics.uploadsFailed } == 1)
        let outputs = hookOutputs(out)
        #expect(outputs.count == 2)
        let byName = Dictionary(uniqueKeysWithValues: outputs.map { ($0["name"] as? String ?? "?", $0) })
        let n = try #require(byName["n.bin"])
        #expect(n["transport"] as? String == "tcp")
        #expect(n["size"] as? Int == native.count)
        #expect(n["path"] as? String == server.directory + "/n.bin")
        #expect(n["digest"] as? String == xxh3(native).map { String(format: "%02x", $0) }.joined())
        #expect(n["digest_algorithm"] as? String == "xxh3-128")
        #expect((n["peer"] as? String)?.hasPrefix("127.0.0.1:") == true)
        #expect((n["duration"] as? Double).map { $0 >= 0 } == true)
        let p = try #require(byName["p.txt"])
        #expect(p["transport"] as? String == "http")
        #expect(p["digest"] is NSNull)
        #expect(FileManager.default.contents(atPath: p["path"] as? String ?? "") == Data("abc".utf8))
    }

    @Test func hooksRunAtMostNAtOnceAreKilledAtTheTimeoutAndFailuresAreCounted() throws {
        let server = try BackgroundServer {
            $0.udpEnabled = false
            $0.onStored = "read line; case \"$line\" in *'\"slow'*) exec sleep 60;; *) exit 3;; esac"
            $0.onStoredLimit = 1
            $0.onStoredTimeout = 0.3
        }
        defer { server.stop() }
        for name in ["slow-1", "slow-2", "fails"] {
            let c = try BlockingClient(port: server.port)
            c.send(Array("PUT /\(name) HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx".utf8))
            _ = c.readUntilEOF()
        }
        #expect(server.waitForStatistics(20) { $0.hooksTimedOut == 2 && $0.hooksFailed == 1 })
        let s = server.onLoop { $0.statistics }
        #expect(s.hooksStarted == 3 && s.hooksSucceeded == 0 && s.hooksDropped == 0)
        let metrics = try BlockingClient(port: server.port)
        metrics.send(Array("GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n".utf8))
        let text = String(decoding: metrics.readUntilEOF() ?? [], as: UTF8.self)
        #expect(text.contains("datastream_hooks_total{outcome=\"timed_out\"} 2"))
        #expect(text.contains("datastream_hooks_total{outcome=\"failed\"} 1"))
    }

    @Test func theHookOptionsAreRangeChecked() throws {
        var c = Server.Configuration()
        try c.set("on-stored", "true")
        try c.set("on-stored-limit", "8")
        #expect(c.onStored == "true" && c.onStoredLimit == 8)
        #expect(throws: (any Error).self) { try c.set("on-stored-limit", "0") }
        #expect(throws: (any Error).self) { try c.set("on-stored-timeout", "-1") }
    }
}
