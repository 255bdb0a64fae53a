// swift-tools-version:6.0
// DataStream: a high-concurrency file receiver on libuv.
//
// Layers (a lower one never imports a higher one):
//   CLibUV (C)  <-  UV (the only importer of CLibUV)
//   CHTTPParser (C)  <-  HTTPParsing (the only importer of CHTTPParser; builds Core's request heads)
//   DataStreamCore (pure Swift: wire formats, state machines, name policy)
//   DataStream (drivers, store, sender: imports UV and DataStreamCore)
//   DataStreamCAPI (the C API of include/datastream.h over DataStream: libdatastream)
//   DataStreamBench (the load generator and verifier of `datastream bench`: imports DataStream)
//   DataStreamFuzzing (fuzz targets over DataStreamCore's parsers; libFuzzer executables in fuzz/)
//   datastream (the command line)
import PackageDescription

let package = Package(
    name: "DataStream",
    products: [
        .executable(name: "datastream", targets: ["datastream"]),
        .library(name: "DataStream", targets: ["DataStream"]),
        .library(name: "UV", targets: ["UV"]),
        .library(name: "DataStreamBench", targets: ["DataStreamBench"]),
        // The C API (include/datastream.h): scripts/install-lib installs these as
        // libdatastream.so and libdatastream.a with a pkg-config file.
        .library(name: "datastream-shared", type: .dynamic, targets: ["DataStreamCAPI"]),
        .library(name: "datastream-static", type: .static, targets: ["DataStreamCAPI"]),
        // The fuzz targets, for the libFuzzer package in fuzz/ (and the corpus replay test).
        .library(name: "DataStreamFuzzing", targets: ["DataStreamFuzzing"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"4.0.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibUV", path: "CLibUV", pkgConfig: "libuv",
            providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(
            name: "CXXHash", path: "CXXHash", pkgConfig: "libxxhash",
            providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(
            name: "CHTTPParser", path: "CHTTPParser",
            providers: [.apt(["libhttp-parser-dev"])]),
        .target(name: "UV", dependencies: ["CLibUV"]),
        .target(name: "HTTPParsing", dependencies: ["CHTTPParser", "DataStreamCore"]),
        .target(
            name: "DataStreamCore",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        .target(
            name: "DataStream",
            dependencies: [
                "UV", "DataStreamCore", "CXXHash", "HTTPParsing",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]),
        // include/datastream.h as a module, so the Swift side fills the very structs C reads.
        .systemLibrary(name: "CDataStreamHeader", path: "include"),
        .target(
            name: "DataStreamCAPI",
            dependencies: ["DataStream", "DataStreamCore", "CDataStreamHeader", .product(name: "Logging", package: "swift-log")],
            linkerSettings: [.unsafeFlags(["-Xlinker", "-soname=libdatastream.so"])]),
        .target(
            name: "DataStreamBench",
            dependencies: [
                "DataStream", "UV", "DataStreamCore",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]),
        .executableTarget(
            name: "datastream",
            dependencies: [
                "DataStream", "DataStreamBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // docs/EMBEDDING.md's Swift example: the server on a loop its host made.
        .executableTarget(name: "swift-host", dependencies: ["DataStream", "UV", "CLibUV"], path: "examples/swift-host"),
        // Fuzz targets over the pure parsers (libFuzzer executables live in fuzz/, a separate package).
        .target(name: "DataStreamFuzzing", dependencies: ["DataStreamCore", "HTTPParsing"]),
        .testTarget(name: "UVTests", dependencies: ["UV", "CLibUV"]),
        .testTarget(name: "HTTPParsingTests", dependencies: ["HTTPParsing", "DataStreamCore"]),
        .testTarget(name: "DataStreamCoreTests", dependencies: ["DataStreamCore", "DataStreamFuzzing", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(
            name: "DataStreamTests",
            dependencies: ["DataStream", "DataStreamBench", "DataStreamCore", "UV", .product(name: "Logging", package: "swift-log")]),
    ]
)
