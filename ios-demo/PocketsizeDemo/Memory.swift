import Darwin
import Foundation

/// Process memory from task_info(TASK_VM_INFO). iOS has no /proc, so the app
/// puts these numbers in report.json's "memory" (runner protocol). The
/// phys_footprint is what jetsam limits an app by; resident_size_peak is the
/// classic peak RSS. Both cover the whole app process, not the model alone.
enum Memory {
    struct Snapshot {
        var physFootprint: UInt64
        var physFootprintPeak: UInt64
        var residentSize: UInt64
        var residentSizePeak: UInt64
    }

    static func snapshot() -> Snapshot? {
        var info = task_vm_info_data_t()
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<integer_t>.size)
        let kr = withUnsafeMutablePointer(to: &info) {
            $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
                task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count)
            }
        }
        guard kr == KERN_SUCCESS else { return nil }
        return Snapshot(
            physFootprint: info.phys_footprint,
            physFootprintPeak: info.ledger_phys_footprint_peak > 0 ? UInt64(info.ledger_phys_footprint_peak) : info.phys_footprint,
            residentSize: info.resident_size,
            residentSizePeak: info.resident_size_peak
        )
    }

    static func mb(_ bytes: UInt64) -> Double { (Double(bytes) / 1_048_576 * 1000).rounded() / 1000 }

    /// The "memory" object of report.json, with the harness's key names.
    static func report(idle: Snapshot?, afterLoad: Snapshot?, end: Snapshot?) -> [String: Any] {
        var m: [String: Any] = [
            "peak_rss_mb": end.map { mb($0.residentSizePeak) } ?? NSNull(),
            "rss_mb": end.map { mb($0.residentSize) } ?? NSNull(),
            "anon_mb": NSNull(), "file_mb": NSNull(),
            "phys_footprint_mb": end.map { mb($0.physFootprint) } ?? NSNull(),
            "phys_footprint_peak_mb": end.map { mb($0.physFootprintPeak) } ?? NSNull(),
            "phys_footprint_idle_mb": idle.map { mb($0.physFootprint) } ?? NSNull(),
            "phys_footprint_after_load_mb": afterLoad.map { mb($0.physFootprint) } ?? NSNull(),
            "source": "task_info(TASK_VM_INFO), whole app process",
        ]
        if let i = idle, let e = end {
            m["phys_footprint_delta_mb"] = mb(e.physFootprintPeak &- min(i.physFootprint, e.physFootprintPeak))
        }
        return m
    }
}
