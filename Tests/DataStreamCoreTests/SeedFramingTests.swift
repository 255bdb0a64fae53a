import Testing
@testable import DataStreamCore

struct SeedFramingTests {
    func framing(_ s: String, max: UInt64 = 1 << 40) throws -> SeedFraming {
        try SeedFraming(digits: Array(s.utf8), maxFileSize: max)
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
        #expect(f.fileDigitsPrefix == Array("12".utf8))
        #expect(f.fileSize == 5)
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
        #expect(f.fileDigitsPrefix == Array("12".utf8))
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
        let f = try SeedFraming(digits: Array("1234".utf8), maxFileSize: 1 << 40)
        #expect(f.declaredSize == 1234)
        #expect(f.smallestSize == 12)
        let plain = try SeedFraming(digits: Array("7".utf8), maxFileSize: 1 << 40)
        #expect(plain.smallestSize == 7 && plain.declaredSize == 7)
    }
}
