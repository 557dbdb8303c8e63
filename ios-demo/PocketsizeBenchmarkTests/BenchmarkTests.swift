import XCTest
@testable import PocketsizeDemo

/// The benchmark as an XCTest, for `xcodebuild test` (what
/// `pocketsize bench --device ios` runs when asked for the XCTest method).
///
/// Parameters arrive as POCKETSIZE_* environment variables: xcodebuild passes
/// every TEST_RUNNER_<NAME> variable of its own environment to the test
/// process as <NAME>. The test is hosted in the app, so relative paths resolve
/// inside the app's data container, where the driver copied the artifact.
final class BenchmarkTests: XCTestCase {
    func testBenchmark() throws {
        guard let params = try BenchParams.read(from: .environment) else {
            throw XCTSkip("no POCKETSIZE_* environment: run through `pocketsize bench --device ios`")
        }
        let bench = Benchmark(params: params)
        let report = bench.run()
        XCTAssertEqual(report["status"] as? String, "ok", "\(report["error"] ?? "")")

        // Xcode's own view of the same model, recorded in the .xcresult:
        // wall clock and memory of a forward pass (5 measured iterations).
        guard let runner = bench.runner else { return }
        let input = [Float](repeating: 0, count: params.inputShape.reduce(1, *))
        let options = XCTMeasureOptions()
        options.iterationCount = 5
        measure(metrics: [XCTClockMetric(), XCTMemoryMetric(), XCTCPUMetric()], options: options) {
            _ = try? runner.run(input, shape: params.inputShape)
        }
    }

    /// Runs everywhere (simulator included): the contract keys parse.
    func testParamsFromEnvironmentAreOptional() throws {
        if ProcessInfo.processInfo.environment["POCKETSIZE_ARTIFACT"] == nil {
            XCTAssertNil(try BenchParams.read(from: .environment))
        }
    }
}
