import DataStreamCore
import Testing

struct ByteCountTests {
    @Test func unitsAndPlainNumbers() throws {
        #expect(try ByteCount.parse("4096") == 4096)
        #expect(try ByteCount.parse("64KiB") == 65_536)
        #expect(try ByteCount.parse("1MiB") == 1 << 20)
        #expect(try ByteCount.parse("2GiB") == 2 << 30)
        #expect(try ByteCount.parse("1TiB") == 1 << 40)
        #expect(try ByteCount.parse("3TB") == 3_000_000_000_000)
        #expect(try ByteCount.parse("1k") == 1024)
        #expect(try ByteCount.parse("1MB") == 1_000_000)
        #expect(try ByteCount.parse(" 7B ") == 7)
    }

    @Test func badCountsSayWhy() {
        #expect(throws: BenchArgumentError.self) { try ByteCount.parse("") }
        #expect(throws: BenchArgumentError.self) { try ByteCount.parse("abc") }
        #expect(throws: BenchArgumentError.self) { try ByteCount.parse("12XB") }
        #expect(throws: BenchArgumentError.self) { try ByteCount.parse("99999999999999GiB") }
        do {
            _ = try ByteCount.parse("3 parsecs")
            Issue.record("no error")
        } catch {
            #expect(error.description.contains("unknown unit"))
        }
    }
}

struct SizeDistributionTests {
    @Test func parsesTheThreeForms() throws {
        #expect(try SizeDistribution(parsing: "1MiB") == .fixed(1 << 20))
        #expect(try SizeDistribution(parsing: "4KiB-64KiB") == .uniform(4096...65_536))
        #expect(try SizeDistribution(parsing: "0,4KiB,1MiB") == .list([0, 4096, 1 << 20]))
        #expect(throws: BenchArgumentError.self) { try SizeDistribution(parsing: "64KiB-4KiB") }
        #expect(throws: BenchArgumentError.self) { try SizeDistribution(parsing: "1,,2") }
        #expect(throws: BenchArgumentError.self) { try SizeDistribution(parsing: "-5") }
    }

    @Test func sizesAreDeterministicWithinBoundsAndVaried() throws {
        let uniform = try SizeDistribution(parsing: "100-200")
        let a = (0..<500).map { uniform.size(of: UInt64($0), seed: 3) }
        let b = (0..<500).map { uniform.size(of: UInt64($0), seed: 3) }
        let c = (0..<500).map { uniform.size(of: UInt64($0), seed: 4) }
        #expect(a == b)
        #expect(a != c)
        #expect(a.allSatisfy { (100...200).contains($0) })
        #expect(Set(a).count > 50)
        let list = SizeDistribution.list([1, 2, 3])
        let picked = Set((0..<300).map { list.size(of: UInt64($0), seed: 9) })
        #expect(picked == [1, 2, 3])
        #expect(SizeDistribution.fixed(5).size(of: 123, seed: 1) == 5)
        #expect(uniform.maximum == 200 && list.maximum == 3)
    }
}

struct BenchContentTests {
    func bytes(_ c: BenchContent, _ index: UInt64, _ size: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        c.forEachSlice(of: index, from: 0, count: size) { out.append(contentsOf: $0) }
        return out
    }

    @Test func theHeaderNamesTheUploadAndTheRun() {
        let c = BenchContent(seed: 77)
        #expect(c.header(of: 12_345).count == BenchContent.headerLength)
        #expect(c.index(fromHeader: c.header(of: 12_345)) == 12_345)
        #expect(BenchContent(seed: 78).index(fromHeader: c.header(of: 1)) == nil)
        #expect(c.index(fromHeader: [UInt8](repeating: 0, count: 16)) == nil)
        #expect(c.index(fromHeader: Array(c.header(of: 1).prefix(10))) == nil)
    }

    @Test func slicesAreContiguousAndEveryUploadDiffers() {
        let c = BenchContent(seed: 5)
        let size = UInt64(BenchContent.windowLimit * 3 + 1000)
        let whole = bytes(c, 4, size)
        #expect(whole.count == Int(size))
        // Any offset gives the same bytes as the whole.
        var part: [UInt8] = []
        c.forEachSlice(of: 4, from: 100_000, count: 5000) { part.append(contentsOf: $0) }
        #expect(part == Array(whole[100_000..<105_000]))
        // Past the header, uploads are windows at different places of the pattern.
        #expect(Array(bytes(c, 5, 4096)[16...]) != Array(whole[16..<4096]))
        #expect(bytes(BenchContent(seed: 6), 4, 4096) != Array(whole[0..<4096]))
        // The same seed gives the same bytes.
        #expect(bytes(BenchContent(seed: 5), 4, 4096) == Array(whole[0..<4096]))
    }

    @Test func matchesFindsAnyWrongByte() {
        let c = BenchContent(seed: 11)
        var b = bytes(c, 9, 300_000)
        #expect(b.withUnsafeBytes { c.matches($0, index: 9, offset: 0) })
        #expect(b.withUnsafeBytes { c.matches(UnsafeRawBufferPointer(rebasing: $0[70_000...]), index: 9, offset: 70_000) })
        #expect(!b.withUnsafeBytes { c.matches($0, index: 8, offset: 0) })
        b[299_999] ^= 1
        #expect(!b.withUnsafeBytes { c.matches($0, index: 9, offset: 0) })
    }
}
