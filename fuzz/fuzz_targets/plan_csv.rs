//! The council CSV reader: never panics or loops on any input, and reports
//! every problem with a line number inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines = data.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    match cpis_cli::plan_csv::PlanReader::new(data) {
        Err(e) => assert!(e.line >= 1 && e.line <= lines + 1),
        Ok(reader) => {
            for (line, row) in reader {
                assert!(line >= 1 && line <= lines + 1);
                if let Err(e) = row {
                    assert!(e.line >= 1 && e.line <= lines + 1);
                }
            }
        }
    }
});
