import Foundation
import UIKit

/// The benchmark mode, following pocketsize's runner protocol
/// (benchmarks/devices/base.py): load (timed), one cold inference (timed),
/// `warmup` untimed runs, then timed runs until both `iterations` and
/// `min_duration_ms` are reached, each appended to times.txt as it happens;
/// eval outputs to eval_outputs.bin; report.json last (write + rename), so its
/// presence means "done". Statistics and accuracy are computed on the host.
final class Benchmark {
    let params: BenchParams
    private(set) var runner: ModelRunner?

    init(params: BenchParams) { self.params = params }

    @discardableResult
    func run() -> [String: Any] {
        let p = params
        try? FileManager.default.createDirectory(at: p.outDir, withIntermediateDirectories: true)
        var report: [String: Any] = [
            "schema": Contract.resultSchema,
            "schema_version": Contract.resultSchemaVersion,
            "run_id": p.runId,
            "status": "failed", "error": NSNull(),
            "runtime": p.format == Contract.formatCoreML ? "coreml" : "executorch",
            "runtime_version": NSNull(), "load_ms": NSNull(), "first_inference_ms": NSNull(),
            "output_shape": NSNull(), "eval_count": 0, "threads": NSNull(),
            "app": ["name": "pocketsize-ios-demo",
                    "version": Bundle.main.infoDictionary?["CFBundleShortVersionString"] as? String ?? "0",
                    "platform": "ios"],
            "device": Benchmark.deviceInfo(),
        ]
        let idle = Memory.snapshot()
        var afterLoad: Memory.Snapshot?
        do {
            try measure(&report, afterLoad: &afterLoad)
            report["status"] = "ok"
        } catch {
            // A failed run still writes report.json so the driver reports why.
            report["error"] = "\(error)"
        }
        report["memory"] = Memory.report(idle: idle, afterLoad: afterLoad, end: Memory.snapshot())
        do {
            let data = try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
            let target = p.outDir.appendingPathComponent(Contract.fileReport)
            let tmp = p.outDir.appendingPathComponent(Contract.fileReport + ".tmp")
            try data.write(to: tmp)
            // POSIX rename: atomic, and works whether or not report.json exists
            // (the driver polls for it; its presence means "done").
            guard rename(tmp.path, target.path) == 0 else {
                throw BenchError.runtime("rename \(tmp.path) -> \(target.path) failed: errno \(errno)")
            }
        } catch {
            NSLog("pocketsize: cannot write report.json: \(error)")
        }
        return report
    }

    private func measure(_ report: inout [String: Any], afterLoad: inout Memory.Snapshot?) throws {
        let p = params
        let size = p.inputShape.reduce(1, *)
        // Timed input: zeros (the normalized mean image); latency does not depend on values.
        let input = [Float](repeating: 0, count: size)

        let t0 = Benchmark.nowNs()
        let runner = try Runners.open(format: p.format, url: p.artifact, threads: p.threads)
        report["load_ms"] = Benchmark.msSince(t0)
        self.runner = runner
        report["runtime"] = runner.runtime
        report["runtime_version"] = runner.runtimeVersion
        report["threads"] = runner.threadsApplied ?? NSNull()
        report["notes"] = runner.notes
        afterLoad = Memory.snapshot()

        let t1 = Benchmark.nowNs()
        let first = try runner.run(input, shape: p.inputShape)
        report["first_inference_ms"] = Benchmark.msSince(t1)
        report["output_shape"] = first.shape

        for _ in 0..<p.warmup { _ = try runner.run(input, shape: p.inputShape) }

        let timesURL = p.outDir.appendingPathComponent(Contract.fileTimes)
        FileManager.default.createFile(atPath: timesURL.path, contents: nil)
        let times = try FileHandle(forWritingTo: timesURL)
        defer { try? times.close() }
        let start = Benchmark.nowNs()
        var n = 0
        while n < p.iterations || Benchmark.msSince(start) < Double(p.minDurationMs) {
            let t = Benchmark.nowNs()
            _ = try runner.run(input, shape: p.inputShape)
            let ms = Benchmark.msSince(t)
            // FileHandle writes are unbuffered: a crash mid-run keeps every line.
            try times.write(contentsOf: Data(String(format: "t %.6f\n", ms).utf8))
            n += 1
        }

        if let evalURL = p.evalInput, p.evalCount > 0 {
            report["eval_count"] = try evaluate(runner, evalURL, size: size)
        }
    }

    private func evaluate(_ runner: ModelRunner, _ url: URL, size: Int) throws -> Int {
        let p = params
        let raw = try Data(contentsOf: url, options: .alwaysMapped)
        guard raw.count == 4 * size * p.evalCount else {
            throw BenchError.badParameter("eval input has \(raw.count) bytes, expected \(4 * size * p.evalCount)")
        }
        var out = Data()
        for i in 0..<p.evalCount {
            // Little-endian float32 on every Apple device; copy one sample out.
            let sample: [Float] = raw.withUnsafeBytes { buf in
                Array(buf.bindMemory(to: Float.self)[(i * size)..<((i + 1) * size)])
            }
            let y = try runner.run(sample, shape: p.inputShape).data
            y.withUnsafeBufferPointer { out.append(Data(buffer: $0)) }
        }
        try out.write(to: p.outDir.appendingPathComponent(Contract.fileEvalOutputs))
        return p.evalCount
    }

    static func nowNs() -> UInt64 { clock_gettime_nsec_np(CLOCK_UPTIME_RAW) }
    static func msSince(_ t: UInt64) -> Double { Double(nowNs() - t) / 1e6 }

    static func deviceInfo() -> [String: Any] {
        var sys = utsname()
        uname(&sys)
        let machine = withUnsafeBytes(of: &sys.machine) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        #if targetEnvironment(simulator)
        let emulated = true
        #else
        let emulated = false
        #endif
        return [
            "kind": "ios",
            "name": machine, // e.g. iPhone16,1; the driver adds the marketing name from devicectl
            "os": "\(UIDevice.current.systemName) \(UIDevice.current.systemVersion)",
            "arch": "arm64",
            "cpu": machine,
            "emulated": emulated,
        ]
    }
}
