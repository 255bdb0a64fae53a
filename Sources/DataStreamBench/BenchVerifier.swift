import DataStreamCore
import Glibc

/// What `datastream bench --verify DIR` found in the receiver's directory.
public struct BenchVerification: Sendable {
    /// Regular files looked at (hidden ones, such as `.datastream`, are skipped).
    public var filesChecked = 0
    /// Files that are exactly one confirmed upload of this run.
    public var verified = 0
    /// "name: reason" for every file of this run whose size or bytes are wrong, or that repeats an upload.
    public var mismatches: [String] = []
    /// Confirmed uploads with no file holding them.
    public var missing: [UInt64] = []
    /// Files of this run for uploads the generator did not see confirmed (stored after it gave up).
    public var unconfirmed = 0
    /// Files not from this run (another seed, or not bench content): left alone.
    public var foreign = 0

    public var ok: Bool { mismatches.isEmpty && missing.isEmpty }
}

/// Checks, after a run, that every upload the receiver confirmed is stored byte for byte. Files
/// are recognised by content (the 16-byte header names the upload), so it works whatever names the
/// receiver chose. Reads with blocking calls: run it after the loop, never on it.
public enum BenchVerifier {
    public static func verify(directory: String, content: BenchContent, sizes: SizeDistribution, confirmed: [UInt64]) -> BenchVerification {
        var result = BenchVerification()
        let wanted = Set(confirmed)
        var seen = Set<UInt64>()
        // Uploads shorter than the header cannot name themselves: match them by bytes.
        var tiny: [[UInt8]: [UInt64]] = [:]
        for i in confirmed {
            let n = sizes.size(of: i, seed: content.seed)
            if n < UInt64(BenchContent.headerLength) { tiny[Array(content.header(of: i).prefix(Int(n))), default: []].append(i) }
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        for name in regularFiles(in: directory) {
            result.filesChecked += 1
            let path = directory + "/" + name
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                result.mismatches.append("\(name): cannot open: \(String(cString: strerror(errno)))")
                continue
            }
            defer { close(fd) }
            var st = stat()
            _ = fstat(fd, &st)
            let size = UInt64(st.st_size)
            let head = pread(fd, buffer.baseAddress, BenchContent.headerLength, 0)
            let headBytes = Array(UnsafeRawBufferPointer(rebasing: buffer[0..<max(head, 0)]))
            guard let index = content.index(fromHeader: headBytes) else {
                if size < UInt64(BenchContent.headerLength), var candidates = tiny[headBytes], let i = candidates.popLast() {
                    tiny[headBytes] = candidates
                    seen.insert(i)
                    result.verified += 1
                } else {
                    result.foreign += 1
                }
                continue
            }
            let expected = sizes.size(of: index, seed: content.seed)
            if size != expected {
                result.mismatches.append("\(name): upload \(index) has \(size) bytes, expected \(expected)")
                continue
            }
            var offset: UInt64 = 0
            var equal = true
            while offset < size, equal {
                let n = pread(fd, buffer.baseAddress, Int(min(UInt64(buffer.count), size - offset)), off_t(offset))
                guard n > 0 else { equal = false; break }
                equal = content.matches(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), index: index, offset: offset)
                if !equal { result.mismatches.append("\(name): upload \(index) differs within bytes \(offset)..<\(offset + UInt64(n))") }
                offset += UInt64(n)
            }
            guard equal else { continue }
            if seen.contains(index) {
                result.mismatches.append("\(name): a second copy of upload \(index)")
            } else if wanted.contains(index) {
                seen.insert(index)
                result.verified += 1
            } else {
                seen.insert(index)
                result.unconfirmed += 1
            }
        }
        result.missing = confirmed.filter { !seen.contains($0) }
        return result
    }

    private static func regularFiles(in directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard !name.hasPrefix(".") else { continue }
            var st = stat()
            if stat(directory + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { names.append(name) }
        }
        return names.sorted()
    }
}
