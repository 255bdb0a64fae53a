import DataStream
import DataStreamCore
import Foundation
import Glibc
import Testing

/// `--proxy-protocol`: a proxy's PROXY v2 header makes the connection the client's, for caps,
/// partial owners and logs; anyone else's header is refused.
struct ProxyProtocolServerTests {
    private func header(_ address: [UInt8], port: UInt16 = 40000) -> [UInt8] {
        ProxyProtocolTestsSupport.header(address: address, port: port)
    }

    @Test func theClientTheHeaderNamesIsWhomCapsAndOwnersCount() throws {
        let server = try BackgroundServer { $0.proxyProtocolFrom = ["127.0.0.0/8"]; $0.maxConnectionsPerAddress = 1 }
        defer { server.stop() }
        // A native upload, left half sent, from 203.0.113.7 (through the proxy on 127.0.0.1).
        let data = content(120, count: 50_000)
        let upload = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .sha256, name: "proxied.bin")
        let first = try BlockingClient(port: server.port)
        first.send(header([203, 0, 113, 7]))
        try first.handshake()
        #expect(try first.announce(upload) == 0)
        first.send(Array(data[0..<10_000]))
        let meta = server.directory + "/.datastream/partial/\(upload.uploadID.hex).meta"
        #expect(server.eventually { ((try? String(contentsOfFile: meta, encoding: .utf8)) ?? "").contains("owner 04cb007107") })
        // A second connection of the same client is over its cap of one; another client's is not.
        let same = try BlockingClient(port: server.port)
        same.send(header([203, 0, 113, 7]))
        same.send(Wire.hello())
        #expect(same.readFrame()?.type == .error)
        let other = try BlockingClient(port: server.port)
        other.send(header([203, 0, 113, 8]))
        let seed = content(121, count: 3_000)
        other.send(Array(String(seed.count).utf8) + seed)
        other.shutdownWrite()
        #expect(other.readUntilEOF() != nil)
        #expect(server.eventually { server.storedFiles().contains { server.contents($0) == seed } })
        #expect(server.waitForStatistics { $0.connectionsRefused == 1 })
    }

    @Test func aHeaderArrivingInPiecesAndLocalOnesAreRead() throws {
        let server = try BackgroundServer { $0.proxyProtocolFrom = ["127.0.0.1", "::1"] }
        defer { server.stop() }
        let h = header([198, 51, 100, 1])
        let slow = try BlockingClient(port: server.port)
        slow.send(Array(h[0..<10]))
        #expect(waitUntil(10) { kernelQueuedBytes(serverPort: server.port, clientPort: slow.localPort) == 10 }, "peeked, not taken")
        let seed = content(122, count: 2_000)
        slow.send(Array(h[10...]) + Array(String(seed.count).utf8) + seed)
        slow.shutdownWrite()
        #expect(slow.readUntilEOF() != nil)
        // LOCAL (a health check): the proxy's own connection, served as such.
        let check = try BlockingClient(port: server.port)
        check.send(ProxyProtocol.signature + [0x20, 0x00, 0x00, 0x00])
        check.send(Array("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
        let answer = String(decoding: check.readUntilEOF() ?? [], as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        #expect(server.eventually { server.storedFiles().contains { server.contents($0) == seed } })
    }

    @Test func aHeaderFromAnyoneElseOrNoneFromAProxyIsRefused() throws {
        // 127.0.0.1 is not the allowed proxy: its PROXY header is refused, its plain upload not.
        let elsewhere = try BackgroundServer { $0.proxyProtocolFrom = ["10.9.9.9"] }
        defer { elsewhere.stop() }
        let spoof = try BlockingClient(port: elsewhere.port)
        spoof.send(header([203, 0, 113, 9]) + Array("5hello".utf8))
        spoof.shutdownWrite()
        #expect(spoof.readUntilEOF() != nil)
        let plain = try BlockingClient(port: elsewhere.port)
        plain.send(Array("5hello".utf8))
        plain.shutdownWrite()
        #expect(plain.readUntilEOF() != nil)
        #expect(elsewhere.eventually { elsewhere.storedFiles().count == 1 })
        #expect(elsewhere.log.lines.contains { $0.contains("a PROXY header from an address not allowed to send one") })
        // From the allowed proxy, a connection without a header is refused: nothing stored.
        let proxied = try BackgroundServer { $0.proxyProtocolFrom = ["127.0.0.1"] }
        defer { proxied.stop() }
        let bare = try BlockingClient(port: proxied.port)
        bare.send(Array("5hello".utf8) + [UInt8](repeating: 0x41, count: 20))
        bare.shutdownWrite()
        #expect(bare.readUntilEOF() != nil)
        #expect(proxied.waitForStatistics { $0.connectionsRefused == 1 })
        #expect(proxied.storedFiles().isEmpty)
        #expect(proxied.log.lines.contains { $0.contains("no PROXY protocol v2 signature") })
    }
}

/// The header builder of the Core tests, for these.
enum ProxyProtocolTestsSupport {
    static func header(address: [UInt8], port: UInt16) -> [UInt8] {
        let family: UInt8 = address.count == 4 ? 0x11 : 0x21
        let destination = address.count == 4 ? [127, 0, 0, 1] : [UInt8](repeating: 0, count: 15) + [1]
        let body = address + destination + [UInt8(port >> 8), UInt8(port & 0xFF), 0x23, 0x28]
        return ProxyProtocol.signature + [0x21, family, UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
    }
}
