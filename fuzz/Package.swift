// swift-tools-version:6.0
// libFuzzer executables for DataStream's parsers (a separate package, so the main build never
// needs -sanitize=fuzzer). Build and run with fuzz/run; the targets themselves live in the main
// package's DataStreamFuzzing module, so the test suite can replay the corpora.
import PackageDescription

let names = ["native-frames", "seed-protocol", "names", "udp-datagrams", "udp-receiver", "flags", "http-requests", "multipart", "websocket"]

let package = Package(
    name: "DataStreamFuzz",
    dependencies: [.package(name: "DataStream", path: "..")],
    targets: [
        // libFuzzer's entry (LLVMFuzzerTestOneInput) and driver, shared by the executables.
        .target(name: "FuzzDriver", dependencies: [.product(name: "DataStreamFuzzing", package: "DataStream")], path: "Driver"),
    ] + names.map { name in
        .executableTarget(name: "fuzz-\(name)", dependencies: ["FuzzDriver"], path: "Targets/\(name)")
    }
)
