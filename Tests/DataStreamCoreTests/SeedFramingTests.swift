import Testing
@testable import DataStreamCore

struct SeedFramingTests {
    func framing(_ s: String, max: UInt64 = 1 << 40) throws -> SeedFraming {
        try SeedFraming(digits: SeedDigits(s.utf8), maxFileSize: max)
    }

    @Test func plainSizeCompletesWithoutEOF() throws {
        var f = try framing("10")
        #expect(f.declaredSize == 10)
        #expect(f.remainingCapacity == 10)
        f.dataReceived(4)
        #expect(!f.isCompleteWithoutEOF)
        f.dataReceived(6)
        #expect(f.isCompleteWithoutEOF)
        #expect(f.fileDigitsPrefix == [])
        #expect(f.fileSize == 10)
    }

    @Test func fileBeginningWithDigitsIsResolvedAtEOF() throws {
        // The client sent "5" then the file "12abc": the stream starts "512abc".
        var f = try framing("512")
        #expect(f.declaredSize == 512)
        f.dataReceived(3) // "abc"
        #expect(!f.isCompleteWithoutEOF)
        #expect(f.fileDigitsPrefix == SeedDigits("12".utf8))
        #expect(f.fileSize == 5)
    }

    @Test func aRunKnownToBeTheSizeHasNoShorterSplit() throws {
        // "25" then "h": the shorter split (size 2, file "5h") is not considered.
        var f = try SeedFraming(digits: SeedDigits("25".utf8), maxFileSize: 1 << 40, sizeEndsTheRun: true)
        #expect(f.declaredSize == 25 && f.smallestSize == 25)
        f.dataReceived(1)
        #expect(f.fileDigitsPrefix == nil)
        f.dataReceived(24)
        #expect(f.isCompleteWithoutEOF && f.fileSize == 25)
        // Over the limit with no shorter split to fall back on: refused.
        #expect(throws: ProtocolError.self) { try SeedFraming(digits: SeedDigits("25".utf8), maxFileSize: 24, sizeEndsTheRun: true) }
        #expect(try framing("25", max: 24).declaredSize == 2)
    }

    @Test func noSplitFitsMeansBroken() throws {
        var f = try framing("512")
        f.dataReceived(4)
        #expect(f.fileDigitsPrefix == nil)
        #expect(f.fileSize == nil)
    }

    @Test func wholeFileInsideTheDigitRun() throws {
        // "2" + file "12": the stream is "212", EOF with no data after the run.
        let f = try framing("212")
        #expect(f.fileDigitsPrefix == SeedDigits("12".utf8))
        #expect(f.fileSize == 2)
    }

    @Test func emptyFile() throws {
        let f = try framing("0")
        #expect(f.fileSize == 0)
        #expect(f.isCompleteWithoutEOF)
    }

    @Test func sizeAboveTheLimitIsRefused() throws {
        #expect(throws: ProtocolError.self) { try framing("99", max: 5) }
        // A shorter split may still be valid: "9" with a file starting with "9".
        let f = try framing("19", max: 5)
        #expect(f.declaredSize == 1)
    }

    @Test func twentyDigitsOverflowFallsBackToShorterSplits() throws {
        let f = try framing("99999999999999999999", max: UInt64.max)
        #expect(f.maxData > 0)
    }
}

struct SeedSizeRangeTests {
    @Test func aFileBeginningWithDigitsHasShorterReadings() throws {
        // "1234": 1234 bytes; or 123 bytes beginning "4"; 12 beginning "34"; 1 beginning "234" (too short: invalid).
        let f = try SeedFraming(digits: SeedDigits("1234".utf8), maxFileSize: 1 << 40)
        #expect(f.declaredSize == 1234)
        #expect(f.smallestSize == 12)
        let plain = try SeedFraming(digits: SeedDigits("7".utf8), maxFileSize: 1 << 40)
        #expect(plain.smallestSize == 7 && plain.declaredSize == 7)
    }
}

struct SeedDigitsTests {
    /// Every length up to 20, each byte where it was put: the three words, their seams, and
    /// what equality, hashing and the contiguous view see.
    @Test func holdsUpToTwentyBytesInPlace() {
        let text = Array("98765432101234567890".utf8)
        var d = SeedDigits()
        for (i, b) in text.enumerated() {
            #expect(!d.isFull)
            d.append(b)
            #expect(d.count == i + 1)
            #expect(Array(d) == Array(text[0...i]))
            #expect(d == SeedDigits(text[0...i]))
            #expect(d.hashValue == SeedDigits(text[0...i]).hashValue)
            #expect(d.withUnsafeBytes { Array($0) } == Array(text[0...i]))
        }
        #expect(d.isFull)
        #expect(d.description == "98765432101234567890")
        for k in 0...21 {
            #expect(Array(d.droppingFirst(k)) == Array(text.dropFirst(k)))
        }
        #expect(SeedDigits("12".utf8) != SeedDigits("21".utf8))
        #expect(SeedDigits("1".utf8) != SeedDigits("10".utf8))
    }
}

struct SeedFramingReferenceTests {
    /// The framing as first written (an array of every split's need), kept here as the reference.
    struct Reference {
        let digits: [UInt8]
        var needs: [UInt64?] = []
        init(_ digits: [UInt8], max: UInt64) {
            self.digits = digits
            var value: UInt64? = 0
            let d = UInt64(digits.count)
            for (i, c) in digits.enumerated() {
                if let v = value {
                    let (m, o1) = v.multipliedReportingOverflow(by: 10)
                    let (a, o2) = m.addingReportingOverflow(UInt64(c - 48))
                    value = (o1 || o2) ? nil : a
                }
                let k = UInt64(i + 1)
                if let s = value, s <= max, s >= d - k { needs.append(s - (d - k)) } else { needs.append(nil) }
            }
        }
        var valid: Bool { needs.contains { $0 != nil } }
        var maxData: UInt64 { needs.reduce(0) { Swift.max($0, $1 ?? 0) } }
        var declaredSize: UInt64 {
            let k = needs.lastIndex { $0 != nil }!
            return needs[k]! + UInt64(digits.count - k - 1)
        }
        var smallestSize: UInt64 {
            needs.enumerated().compactMap { i, n in n.map { $0 + UInt64(digits.count - i - 1) } }.min()!
        }
        func prefix(received: UInt64) -> [UInt8]? {
            for (i, need) in needs.enumerated() where need == received { return Array(digits[(i + 1)...]) }
            return nil
        }
    }

    /// Every digit run of up to 4 digits, with limits that cut some splits, at every count of
    /// data bytes where the answer can change: the kept values and the prefix at the end are
    /// the reference's, whether the upload completed without its end or not.
    @Test func agreesWithTheReferenceOnEveryShortRun() throws {
        var runs: [[UInt8]] = [[]]
        for _ in 0..<4 { runs = runs.flatMap { r in (48...57).map { r + [UInt8($0)] } } + runs }
        runs.removeAll { $0.isEmpty }
        for run in runs {
            for limit: UInt64 in [UInt64.max, 100, 9] {
                let reference = Reference(run, max: limit)
                guard reference.valid else {
                    #expect(throws: ProtocolError.self) { try SeedFraming(digits: SeedDigits(run), maxFileSize: limit) }
                    continue
                }
                let framing = try SeedFraming(digits: SeedDigits(run), maxFileSize: limit)
                if (framing.maxData, framing.declaredSize, framing.smallestSize) != (reference.maxData, reference.declaredSize, reference.smallestSize) {
                    Issue.record("\(run) limit \(limit): \(framing)")
                }
                // The counts where the answer can change: each split's need and its neighbours.
                var counts: Set<UInt64> = [0, reference.maxData]
                for need in reference.needs.compactMap({ $0 }) { counts.formUnion([need, need + 1, need &- 1]) }
                for n in counts where n <= reference.maxData {
                    var f = framing
                    f.dataReceived(n)
                    let prefix = f.fileDigitsPrefix.map { Array($0) }
                    if prefix != reference.prefix(received: n) {
                        Issue.record("\(run) limit \(limit) after \(n): \(String(describing: prefix))")
                    }
                }
            }
        }
    }

    @Test func twentyDigitRunsAgreeWithTheReference() throws {
        for run in ["18446744073709551615", "18446744073709551616", "00000000000000000012", "99999999999999999999"] {
            let digits = Array(run.utf8)
            let reference = Reference(digits, max: UInt64.max)
            let framing = try SeedFraming(digits: SeedDigits(digits), maxFileSize: UInt64.max)
            #expect(framing.maxData == reference.maxData)
            #expect(framing.declaredSize == reference.declaredSize)
            #expect(framing.smallestSize == reference.smallestSize)
        }
    }
}
