import Crypto
import DataStream
import DataStreamCore
import Foundation
import Testing

/// Upload ids are keyed with the sender's secret (issue 21, item 4): stable for one sender, so
/// a later run resumes; not computable by anyone who only knows the file.
struct UploadIdentityTests {
    @Test func idsAreStableForOneSecretAndDifferUnderAnother() throws {
        let path = writeTemporaryFile(content(81, count: 1_000), name: "id.bin")
        let stateA = BackgroundServer.temporaryDirectory() + "/state/a", stateB = BackgroundServer.temporaryDirectory() + "/state/b"
        let a = try UploadIdentity(stateDirectory: stateA)
        let again = try UploadIdentity(stateDirectory: stateA)
        let b = try UploadIdentity(stateDirectory: stateB)
        #expect(a.isPersistent)
        let idA = try #require(a.identity(of: path)), idAgain = try #require(again.identity(of: path)), idB = try #require(b.identity(of: path))
        #expect(idA.size == 1_000)
        #expect(idA.id == idAgain.id)
        #expect(idA.id != idB.id)
        // Not the unkeyed hash of what anyone can see (the derivation before the secret).
        var st = stat()
        _ = stat(path, &st)
        let key = "\(URL(fileURLWithPath: path).resolvingSymlinksInPath().path)\n\(st.st_size)\n\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
        #expect(idA.id.bytes != Array(Array(SHA256.hash(data: Array(key.utf8))).prefix(16)))
        // The secret: 32 bytes, readable by its owner only.
        let attributes = try FileManager.default.attributesOfItem(atPath: stateA + "/sender.key")
        #expect((attributes[.size] as? Int) == 32)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        // Not a regular file: no id.
        #expect(a.identity(of: stateA) == nil)
    }

    @Test func aStateDirectoryThatCannotBeUsedIsSaidAndTheSendStillWorks() throws {
        let blocker = writeTemporaryFile([1], name: "not-a-directory")
        #expect(throws: UploadIdentity.Failure.self) { try UploadIdentity(stateDirectory: blocker + "/state") }
        let server = try BackgroundServer()
        defer { server.stop() }
        let path = writeTemporaryFile(content(82, count: 5_000), name: "stateless.bin")
        let r = try CommandLineTests().run(["send", path, "--to", "127.0.0.1:\(server.port)", "--state-dir", blocker + "/state"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("cannot keep the sender's secret in \(blocker)/state"), "\(r.stderr)")
        #expect(server.contents("stateless.bin") == content(82, count: 5_000))
    }
}
