import Testing
@testable import DataStreamCore

struct NamePolicyTests {
    @Test(arguments: [
        ("../../etc/passwd", "___.._etc_passwd"),
        ("/etc/passwd", "_etc_passwd"),
        ("..", "__"),
        (".", "_"),
        (".hidden", "_hidden"),
        ("a/b\\c", "a_b_c"),
        ("tab\there", "tab_here"),
        ("new\nline", "new_line"),
        ("report.pdf", "report.pdf"),
        ("ünïcødé.txt", "ünïcødé.txt"),
    ])
    func sanitisedNamesStayOneComponent(input: String, expected: String) throws {
        let name = try NamePolicy.sanitise(Array(input.utf8))
        #expect(name == expected)
        #expect(!name.contains("/"))
        #expect(name != "." && name != "..")
        #expect(!name.hasPrefix("."))
    }

    @Test func refusesEmptyLongAndInvalidNames() {
        #expect(throws: ProtocolError.self) { try NamePolicy.sanitise([]) }
        #expect(throws: ProtocolError.self) { try NamePolicy.sanitise(Array(repeating: 0x61, count: 241)) }
        #expect(throws: ProtocolError.self) { try NamePolicy.sanitise([0xFF, 0xFE]) }
    }

    @Test func collisionCandidates() {
        #expect(NamePolicy.candidate("report.pdf", attempt: 0) == "report.pdf")
        #expect(NamePolicy.candidate("report.pdf", attempt: 2) == "report-2.pdf")
        #expect(NamePolicy.candidate("archive", attempt: 1) == "archive-1")
        #expect(NamePolicy.candidate("_bashrc", attempt: 1) == "_bashrc-1")
    }

    @Test func seedNamesCarryUTCTime() {
        #expect(NamePolicy.seedUploadName(utcSeconds: 0, counter: 1) == "upload-19700101T000000Z-1.bin")
        #expect(NamePolicy.seedUploadName(utcSeconds: 1_795_396_500, counter: 42) == "upload-20261123T011500Z-42.bin")
    }

    /// The counter is written digit by digit into the name's storage: every digit count, and
    /// the largest counter, come out as decimal text would.
    @Test func seedNameCountersOfEveryLength() {
        let prefix = NamePolicy.seedUploadNamePrefix(utcSeconds: 0)
        var counters: [UInt64] = [0, UInt64.max, UInt64.max - 1]
        var p: UInt64 = 1
        for _ in 0..<19 { counters += [p - 1, p, p + 1, p * 7]; p *= 10 }
        for counter in counters {
            let name = NamePolicy.seedUploadName(prefix: prefix, counter: counter)
            #expect(name == prefix + String(counter) + ".bin")
            #expect(name.utf8.count == prefix.utf8.count + String(counter).count + 4)
        }
        #expect(NamePolicy.seedUploadName(prefix: "", counter: 7) == "7.bin")
    }

    /// The name a system call gets (`write(into:)`, a C string) is the one shown, for every
    /// collision attempt: the same as `candidate` makes from the name itself.
    @Test func seedNameCandidatesAsCStrings() {
        let prefix = NamePolicy.seedUploadNamePrefix(utcSeconds: 1_795_396_500)
        for counter: UInt64 in [0, 9, 42, 1_000_000, UInt64.max] {
            for attempt in [0, 1, 9, 10, 9_999, Int(Int32.max)] {
                let name = SeedUploadName(prefix: prefix, counter: counter, attempt: attempt)
                let expected = NamePolicy.candidate(NamePolicy.seedUploadName(prefix: prefix, counter: counter), attempt: attempt)
                #expect(name.description == expected)
                let capacity = SeedUploadName.capacity(prefixLength: prefix.utf8.count)
                let bytes = [UInt8](unsafeUninitializedCapacity: capacity) { buffer, count in
                    count = name.write(into: UnsafeMutableRawBufferPointer(buffer)) + 1
                }
                #expect(bytes.last == 0)
                #expect(String(decoding: bytes.dropLast(), as: UTF8.self) == expected)
            }
        }
    }
}

struct PartialMetadataTests {
    @Test func roundTrip() {
        let m = PartialMetadata(FileHeader(uploadID: .random(), size: 12345, digest: .sha256, name: "a b\nc.txt"))
        #expect(PartialMetadata(decoding: m.encoded) == m)
        #expect(PartialMetadata(decoding: Array("garbage".utf8)) == nil)
    }
}

struct WaterMarksTests {
    @Test func pausesAboveHighResumesAtLow() {
        var w = WaterMarks(low: 10, high: 20)
        #expect(w.added(15) == .none)
        #expect(w.added(10) == .pause)
        #expect(w.added(1) == .none)
        #expect(w.removed(10) == .none)
        #expect(w.removed(6) == .resume)
        #expect(w.buffered == 10)
        #expect(w.removed(10) == .none)
    }
}

struct WireTests {
    @Test func resultRoundTrip() throws {
        let r = UploadResult(uploadID: .random(), status: .stored, digestAlgorithm: .xxh3_128, digest: Array(0..<16), storedName: "x.bin", message: "stored")
        let frame = Wire.result(r)
        #expect(frame[0] == Wire.FrameType.result.rawValue)
        #expect(try Wire.decodeResult(frame[5...]) == r)
    }

    @Test func noFrameTypeIsAnASCIIDigit() {
        for t: Wire.FrameType in [.hello, .welcome, .auth, .authOK, .file, .ready, .end, .result, .bye, .error] {
            #expect(!(0x30...0x39).contains(t.rawValue))
        }
    }

    @Test func authenticationResponse() {
        let nonce = Authentication.nonce()
        let mac = Authentication.response(token: "secret", nonce: nonce)
        #expect(mac.count == 32)
        #expect(Authentication.verify(token: "secret", nonce: nonce, response: mac))
        #expect(!Authentication.verify(token: "other", nonce: nonce, response: mac))
        #expect(!Authentication.verify(token: "secret", nonce: Authentication.nonce(), response: mac))
    }
}
