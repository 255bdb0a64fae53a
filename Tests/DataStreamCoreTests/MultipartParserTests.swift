import DataStreamCore
import Testing

/// The multipart/form-data reader over real bodies, whole and in every split.
struct MultipartParserTests {
    struct Parsed: Equatable {
        var parts: [(field: String?, filename: String?, bytes: [UInt8])] = []
        var finished = false
        static func == (a: Parsed, b: Parsed) -> Bool {
            a.finished == b.finished && a.parts.count == b.parts.count
                && zip(a.parts, b.parts).allSatisfy { $0.field == $1.field && $0.filename == $1.filename && $0.bytes == $1.bytes }
        }
    }

    /// Feeds `body` in pieces of `chunk` bytes, again after each stop, as the driver does.
    func parse(_ body: [UInt8], boundary: String, chunk: Int) throws -> Parsed {
        var p = MultipartParser(boundary: boundary)
        var out = Parsed()
        var start = 0
        while start < body.count {
            let piece = Array(body[start..<min(body.count, start + chunk)])
            var at = 0
            while at < piece.count {
                let n = try piece.withUnsafeBytes { all in
                    try p.parse(UnsafeRawBufferPointer(rebasing: all[at...])) { event in
                        switch event {
                        case .partBegan(let part): out.parts.append((part.field, part.filename.map { String(decoding: $0, as: UTF8.self) }, []))
                        case .data(let b): out.parts[out.parts.count - 1].bytes += b
                        case .carried(let b): out.parts[out.parts.count - 1].bytes += b
                        case .partEnded: break
                        case .finished: out.finished = true
                        }
                    }
                }
                if n == 0 { break }
                at += n
            }
            start += chunk
        }
        return out
    }

    let boundary = "----WebKitFormBoundaryx7Zq"
    func body(_ parts: [(String, String?, [UInt8])], preamble: String = "") -> [UInt8] {
        var out = Array(preamble.utf8)
        for (field, filename, bytes) in parts {
            out += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(field)\"\(filename.map { "; filename=\"\($0)\"" } ?? "")\r\nContent-Type: application/octet-stream\r\n\r\n".utf8)
            out += bytes
            out += Array("\r\n".utf8)
        }
        return out + Array("--\(boundary)--\r\nepilogue".utf8)
    }

    @Test func everySplitOfTheBodyGivesTheSameParts() throws {
        // Bytes that look like the start of a delimiter, inside a file.
        let tricky = Array("a\r\n--\(boundary.dropLast())X\r\r\n-\r\n--".utf8) + (0..<300).map { UInt8($0 % 256) }
        let parts: [(String, String?, [UInt8])] = [("note", nil, Array("hello".utf8)), ("f", "a b.bin", tricky), ("g", "empty.txt", [])]
        let whole = body(parts, preamble: "ignored preamble\r\n")
        let expected = Parsed(parts: parts.map { ($0.0, $0.1, $0.2) }, finished: true)
        for chunk in [1, 2, 3, 5, 7, 13, 64, 4096] {
            #expect(try parse(whole, boundary: boundary, chunk: chunk) == expected, "chunk \(chunk)")
        }
    }

    @Test func theBoundaryComesFromTheContentType() {
        #expect(MultipartParser.boundary(contentType: "multipart/form-data; boundary=abc") == "abc")
        #expect(MultipartParser.boundary(contentType: "Multipart/Form-Data; charset=utf-8; boundary=\"a b\"") == "a b")
        #expect(MultipartParser.boundary(contentType: "application/json") == nil)
        #expect(MultipartParser.boundary(contentType: "multipart/form-data") == nil)
    }

    @Test func fileNamesWithQuotesAndRFC5987() throws {
        let head = Array("Content-Disposition: form-data; name=\"f\"; filename=\"say \\\"hi\\\".txt\"\r\n\r\n".utf8)
        var p = MultipartParser(boundary: "b")
        var names: [String] = []
        let input = Array("--b\r\n".utf8) + head
        _ = try input.withUnsafeBytes { try p.parse($0) { if case .partBegan(let part) = $0 { names.append(String(decoding: part.filename ?? [], as: UTF8.self)) } } }
        #expect(names == ["say \"hi\".txt"])
        var q = MultipartParser(boundary: "b")
        let star = Array("--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"; filename*=UTF-8''caf%C3%A9.txt\r\n\r\n".utf8)
        _ = try star.withUnsafeBytes { try q.parse($0) { if case .partBegan(let part) = $0 { names.append(String(decoding: part.filename ?? [], as: UTF8.self)) } } }
        #expect(names.last == "café.txt")
    }

    @Test func anEndlessPartHeadFails() {
        var p = MultipartParser(boundary: "b")
        let input = Array("--b\r\n".utf8) + [UInt8](repeating: 0x41, count: MultipartParser.maxPartHead + 10)
        #expect(throws: MultipartParser.Failure.self) { _ = try input.withUnsafeBytes { try p.parse($0) { _ in } } }
    }
}
