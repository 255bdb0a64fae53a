import Testing
@testable import DataStreamCore

/// The one path every numeric flag goes through.
struct FlagValueTests {
    @Test func integersAreRangeCheckedNeverWrapped() throws {
        #expect(try FlagValue.port("0", flag: "--port") == 0)
        #expect(try FlagValue.port(" 9000 ", flag: "--port") == 9000)
        #expect(try FlagValue.port("65535", flag: "--port") == 65_535)
        for bad in ["65536", "70000", "-1", "", "12abc", "1e3", "99999999999999999999"] {
            #expect(throws: FlagValue.Invalid.self, "\(bad)") { try FlagValue.port(bad, flag: "--port") }
        }
        #expect(throws: FlagValue.Invalid.self) { try FlagValue.port("0", flag: "--to's port", allowZero: false) }
        do {
            _ = try FlagValue.integer("-5", flag: "--udp-max-sessions", in: 1...65_536)
            Issue.record("-5 accepted")
        } catch {
            #expect(error.description == "--udp-max-sessions must be a whole number from 1 to 65536, got '-5'")
        }
    }

    @Test func secondsAreFiniteAndBounded() throws {
        #expect(try FlagValue.seconds("0.5", flag: "--idle-timeout", in: 0.001...FlagValue.longestSeconds) == 0.5)
        #expect(try FlagValue.seconds("30", flag: "--idle-timeout", in: 0.001...FlagValue.longestSeconds) == 30)
        for bad in ["inf", "-inf", "nan", "1e300", "0", "-1", "thirty"] {
            #expect(throws: FlagValue.Invalid.self, "\(bad)") { try FlagValue.seconds(bad, flag: "--idle-timeout", in: 0.001...FlagValue.longestSeconds) }
        }
        do {
            _ = try FlagValue.seconds("inf", flag: "--drain-timeout", in: 0...FlagValue.longestSeconds)
            Issue.record("inf accepted")
        } catch {
            #expect(error.description == "--drain-timeout must be a number of seconds from 0 to 31536000, got 'inf'")
        }
    }

    @Test func byteCountsTakeUnitsAndRanges() throws {
        #expect(try FlagValue.bytes("64KiB", flag: "--udp-window", in: (64 << 10)...(1 << 30)) == 64 << 10)
        #expect(throws: FlagValue.Invalid.self) { try FlagValue.bytes("63KiB", flag: "--udp-window", in: (64 << 10)...(1 << 30)) }
        #expect(throws: FlagValue.Invalid.self) { try FlagValue.bytes("2GiB", flag: "--udp-window", in: (64 << 10)...(1 << 30)) }
        #expect(throws: FlagValue.Invalid.self) { try FlagValue.bytes("-1", flag: "--max-file-size", in: 1...(1 << 60)) }
        #expect(throws: FlagValue.Invalid.self) { try FlagValue.bytes("99999999999TiB", flag: "--max-file-size", in: 1...(1 << 60)) }
    }
}
