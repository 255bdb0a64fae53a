import DataStreamFuzzing
import Foundation
import Testing

/// Replays every input kept in `fuzz/corpus/TARGET/` (the seed corpus and every crash found so
/// far, kept as regressions) through its fuzz target: an invariant that breaks again traps here.
struct FuzzCorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("fuzz/corpus").path

    @Test(arguments: FuzzTarget.allCases)
    func everyKeptInputStillPasses(target: FuzzTarget) throws {
        let dir = Self.corpus + "/" + target.rawValue
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(!names.isEmpty, "no seed corpus in \(dir)")
        for name in names {
            let bytes = try #require(FileManager.default.contents(atPath: dir + "/" + name))
            bytes.withUnsafeBytes { target.run($0) }
        }
    }

    /// The targets do reject what they must: a traversal name is never accepted as is, and a
    /// complete native upload reaches its verification (so the harness drives the machine deep).
    @Test func targetsRunOnTheirSeedsAndOnEmptyInput() {
        for target in FuzzTarget.allCases {
            [UInt8]().withUnsafeBytes { target.run($0) }
        }
    }
}
