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

    /// Look-alike names are made alike: NFC and NFD spellings are one name, and invisible
    /// format characters (bidi overrides, zero-width, BOM) are replaced like control characters.
    @Test func lookAlikeNamesAreNormalisedAndInvisibleCharactersReplaced() throws {
        let nfc = try NamePolicy.sanitise(Array("caf\u{E9}.txt".utf8))
        let nfd = try NamePolicy.sanitise(Array("cafe\u{301}.txt".utf8))
        #expect(Array(nfc.utf8) == Array(nfd.utf8))
        #expect(Array(nfd.utf8) == Array("caf\u{E9}.txt".utf8))
        #expect(try NamePolicy.sanitise(Array("photo\u{202E}gnp.exe".utf8)) == "photo_gnp.exe")
        #expect(try NamePolicy.sanitise(Array("a\u{200B}b\u{200D}c\u{FEFF}d\u{2066}e".utf8)) == "a_b_c_d_e")
        #expect(try NamePolicy.sanitise(Array("\u{FEFF}report.pdf".utf8)) == "_report.pdf")
        // Ordinary letters of other scripts are kept as they are.
        #expect(try NamePolicy.sanitise(Array("отчёт 報告 تقرير.pdf".utf8)) == "отчёт 報告 تقرير.pdf")
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

    /// The counter is written digit by digit: every digit count, and the largest counter, come
    /// out as decimal text would; so do the date's fields, zero-padded.
    @Test func seedNameCountersOfEveryLength() {
        let prefix = NamePolicy.seedUploadNamePrefix(utcSeconds: 0)
        #expect(prefix == "upload-19700101T000000Z-")
        var counters: [UInt64] = [0, UInt64.max, UInt64.max - 1]
        var p: UInt64 = 1
        for _ in 0..<19 { counters += [p - 1, p, p + 1, p * 7]; p *= 10 }
        for counter in counters {
            let name = NamePolicy.seedUploadName(utcSeconds: 0, counter: counter)
            #expect(name == prefix + String(counter) + ".bin")
        }
        // 2000-02-29 (a leap day) 09:05:03, and the last second of 9999.
        #expect(NamePolicy.seedUploadNamePrefix(utcSeconds: 951_815_103) == "upload-20000229T090503Z-")
        #expect(NamePolicy.seedUploadNamePrefix(utcSeconds: 253_402_300_799) == "upload-99991231T235959Z-")
    }

    /// The name a system call gets (`write(into:)`, a C string) is the one shown, for every
    /// collision attempt: the same as `candidate` makes from the name itself.
    @Test func seedNameCandidatesAsCStrings() {
        for counter: UInt64 in [0, 9, 42, 1_000_000, UInt64.max] {
            for attempt in [0, 1, 9, 10, 9_999, Int.max] {
                let name = SeedUploadName(utcSeconds: 1_795_396_500, counter: counter, attempt: attempt)
                let expected = NamePolicy.candidate(NamePolicy.seedUploadName(utcSeconds: 1_795_396_500, counter: counter), attempt: attempt)
                #expect(name.description == expected)
                let bytes = [UInt8](unsafeUninitializedCapacity: SeedUploadName.capacity) { buffer, count in
                    count = name.write(into: UnsafeMutableRawBufferPointer(buffer)) + 1
                }
                #expect(bytes.last == 0)
                #expect(String(decoding: bytes.dropLast(), as: UTF8.self) == expected)
            }
        }
        // A formatter reused across names of different seconds writes what each name writes.
        var formatter = SeedUploadName.Formatter()
        for (second, counter, attempt) in [(0, 1, 0), (0, 2, 3), (1_795_396_500, 42, 0), (1_795_396_501, 43, 1), (0, 7, 0)] {
            let name = SeedUploadName(utcSeconds: second, counter: UInt64(counter), attempt: attempt)
            let bytes = [UInt8](unsafeUninitializedCapacity: SeedUploadName.capacity) { buffer, count in
                count = formatter.write(name, into: UnsafeMutableRawBufferPointer(buffer)) + 1
            }
            #expect(String(decoding: bytes.dropLast(), as: UTF8.self) == name.description)
            #expect(bytes.last == 0)
        }
        // The longest name (the largest counter and attempt, a far year) fits.
        let longest = SeedUploadName(utcSeconds: Int.max / 2, counter: UInt64.max, attempt: Int.max)
        #expect(longest.description.utf8.count < SeedUploadName.capacity)
    }
}

struct PartialMetadataTests {
    @Test func roundTrip() {
        let m = PartialMetadata(FileHeader(uploadID: .random(), size: 12345, digest: .sha256, name: "a b\nc.txt"))
        #expect(PartialMetadata(decoding: m.encoded) == m)
        #expect(PartialMetadata(decoding: Array("garbage".utf8)) == nil)
    }

    @Test func receiptRoundTripsAndIsNotMetadata() {
        let header = FileHeader(uploadID: .random(), size: 77, digest: .xxh3_128, name: "ü b\nc.txt")
        let r = UploadReceipt(header: header, storedName: "ü b_c-2.txt", digest: [0, 1, 0xfe, 0xff])
        #expect(UploadReceipt(decoding: r.encoded) == r)
        #expect(UploadReceipt(decoding: PartialMetadata(header).encoded) == nil)
        #expect(PartialMetadata(decoding: r.encoded) == nil)
        #expect(UploadReceipt(decoding: Array("garbage".utf8)) == nil)
        // Any field missing or malformed: no receipt.
        let lines = String(decoding: r.encoded, as: UTF8.self).split(separator: "\n")
        for key in ["id", "size", "digest", "name", "stored", "sum"] {
            let without = lines.filter { !$0.hasPrefix(key + " ") }.joined(separator: "\n") + "\n"
            #expect(UploadReceipt(decoding: Array(without.utf8)) == nil, "without \(key)")
            let broken = lines.map { $0.hasPrefix(key + " ") ? key + " zz" + $0.dropFirst(key.count + 1) : String($0) }.joined(separator: "\n") + "\n"
            #expect(UploadReceipt(decoding: Array(broken.utf8)) == nil, "malformed \(key)")
        }
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
