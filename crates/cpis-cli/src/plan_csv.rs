//! The CSV format councils upload with `cpis plans sync --csv`: a header row
//! naming the columns (any order), then one plan per record, RFC 4180 quoting
//! (fields may be quoted with `"`, a quote inside is doubled, quoted fields
//! may span lines). Records are read one at a time, so a national-size file
//! streams in bounded memory.
//!
//! Columns: `local_reference`, `nhs_number`, `date_of_birth`, `plan_type`,
//! `start_date`, `end_date`, `expected_delivery_date`, `team_name`,
//! `office_phone`, `emergency_duty_phone`, `email`. `plan_type` is
//! `CHILD_PROTECTION`, `LOOKED_AFTER` or `UNBORN_CHILD_PROTECTION` (also
//! `CPP`, `LAC`, `UCPP`, or the full `PLAN_TYPE_...` name). Optional columns
//! may be left out of the header; empty fields are empty values. Field
//! contents are checked by the Registry, not here: this reader only turns
//! records into `Plan` messages.
//!
//! Rows whose fields are all empty (a spreadsheet's `,,,,,,`) are skipped and
//! counted ([`PlanReader::blank_rows`]). A problem is reported on the row it
//! is on, and never swallows the rows after it: a quote opens a quoted field
//! only at the start of a field (a stray `"` inside a field is an error of
//! that row alone), and when a quoted field that spans lines turns out to be
//! broken, its row is reported and reading resumes on the next line.
//!
//! Long (about 450 lines) because its property and row-level tests live beside the reader.
//!

use cpis_proto::common::v1::{ContactDetails, PlanType};
use cpis_proto::registry::v1::Plan;
use std::collections::VecDeque;
use std::io::BufRead;

/// Every column the format knows, in the canonical order.
pub const COLUMNS: &[&str] = &[
    "local_reference",
    "nhs_number",
    "date_of_birth",
    "plan_type",
    "start_date",
    "end_date",
    "expected_delivery_date",
    "team_name",
    "office_phone",
    "emergency_duty_phone",
    "email",
];

/// Columns the header must name.
pub const REQUIRED: &[&str] = &["local_reference", "nhs_number", "plan_type", "start_date"];

/// Longest record accepted, in bytes (a guard against a file with an unclosed quote).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// A problem with the file itself (not with a plan's contents).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {message}", field.map(|f| format!(", field {f}")).unwrap_or_default())]
pub struct CsvError {
    /// 1-based line where the record starts.
    pub line: u64,
    /// The column at fault, when one is.
    pub field: Option<&'static str>,
    /// What is wrong; never quotes field contents.
    pub message: String,
}

impl CsvError {
    fn at(line: u64, message: impl Into<String>) -> Self {
        Self { line, field: None, message: message.into() }
    }
}

/// Reads plans from a CSV stream.
pub struct PlanReader<R> {
    input: Lines<R>,
    columns: Vec<usize>,
    blank_rows: u64,
}

impl<R: BufRead> PlanReader<R> {
    /// Reads and checks the header row.
    pub fn new(input: R) -> Result<Self, CsvError> {
        let mut input = Lines { input, line: 0, replay: VecDeque::new() };
        let (line, header) = loop {
            match input.record()? {
                None => return Err(CsvError::at(1, "the file is empty: a header row is required")),
                Some(r) => match r.fields {
                    Ok(fields) if fields.iter().all(|f| f.trim().is_empty()) => continue,
                    Ok(fields) => break (r.start, fields),
                    Err(message) => return Err(CsvError::at(r.start, format!("the header row: {message}"))),
                },
            }
        };
        let mut columns = Vec::with_capacity(header.len());
        for name in &header {
            let name = name.trim().trim_start_matches('\u{feff}').to_ascii_lowercase();
            let Some(index) = COLUMNS.iter().position(|c| *c == name) else {
                return Err(CsvError::at(
                    line,
                    format!("unknown column {name:?}; expected some of {}", COLUMNS.join(", ")),
                ));
            };
            if columns.contains(&index) {
                return Err(CsvError::at(line, format!("column {name:?} appears twice")));
            }
            columns.push(index);
        }
        for required in REQUIRED {
            let index = COLUMNS.iter().position(|c| c == required).unwrap_or(usize::MAX);
            if !columns.contains(&index) {
                return Err(CsvError::at(line, format!("the header has no {required:?} column")));
            }
        }
        Ok(Self { input, columns, blank_rows: 0 })
    }

    /// Rows skipped so far because every field was empty.
    pub fn blank_rows(&self) -> u64 {
        self.blank_rows
    }

    fn to_plan(&self, line: u64, fields: Vec<String>) -> Result<Plan, CsvError> {
        if fields.len() != self.columns.len() {
            return Err(CsvError::at(line, format!("expected {} fields, found {}", self.columns.len(), fields.len())));
        }
        let mut values: [String; 11] = Default::default();
        for (field, &column) in fields.into_iter().zip(&self.columns) {
            values[column] = field.trim().to_string();
        }
        let [local_reference, nhs_number, date_of_birth, plan_type, start_date, end_date, expected_delivery_date, team_name, office_phone, emergency_duty_phone, email] =
            values;
        let plan_type = parse_plan_type(&plan_type).ok_or_else(|| CsvError {
            line,
            field: Some("plan_type"),
            message: "must be CHILD_PROTECTION, LOOKED_AFTER or UNBORN_CHILD_PROTECTION (or CPP, LAC, UCPP)".into(),
        })?;
        Ok(Plan {
            local_reference,
            nhs_number,
            date_of_birth,
            plan_type: plan_type as i32,
            start_date,
            end_date,
            expected_delivery_date,
            contact: Some(ContactDetails { team_name, office_phone, emergency_duty_phone, email }),
            ..Default::default()
        })
    }
}

impl<R: BufRead> Iterator for PlanReader<R> {
    /// The line a record starts on, and its plan or what is wrong with it.
    type Item = (u64, Result<Plan, CsvError>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let record = match self.input.record() {
                Ok(None) => return None,
                Ok(Some(record)) => record,
                Err(e) => return Some((e.line, Err(e))),
            };
            let start = record.start;
            let fields = match record.fields {
                Ok(fields) if fields.iter().all(|f| f.trim().is_empty()) => {
                    self.blank_rows += 1;
                    continue;
                }
                Ok(fields) => fields,
                Err(message) => {
                    self.input.resume_after_first_line(start, record.raw_lines);
                    return Some((start, Err(CsvError::at(start, message))));
                }
            };
            let broken = fields.len() != self.columns.len();
            let plan = self.to_plan(start, fields);
            if broken {
                // A broken record spanning lines: report it, re-read the lines it took.
                self.input.resume_after_first_line(start, record.raw_lines);
            }
            return Some((start, plan));
        }
    }
}

/// One record as read: where it starts, its fields (or what is wrong with
/// them), and the raw lines it took (to re-read them if it is broken).
struct Record {
    start: u64,
    fields: Result<Vec<String>, String>,
    raw_lines: Vec<Vec<u8>>,
}

/// Physical lines of the input, with lines to read again first.
struct Lines<R> {
    input: R,
    /// Lines read so far (the last line handed out).
    line: u64,
    /// Lines handed back by [`Lines::resume_after_first_line`], with their numbers.
    replay: VecDeque<(u64, Vec<u8>)>,
}

impl<R: BufRead> Lines<R> {
    /// The next physical line (with its terminator) and its number.
    fn next_line(&mut self) -> Result<Option<(u64, Vec<u8>)>, CsvError> {
        if let Some(line) = self.replay.pop_front() {
            return Ok(Some(line));
        }
        let mut raw = Vec::new();
        let n = self
            .input
            .read_until(b'\n', &mut raw)
            .map_err(|e| CsvError::at(self.line + 1, format!("cannot read the file: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        Ok(Some((self.line, raw)))
    }

    /// Hands back every line of a broken record starting on line `start`
    /// but its first, so the rows a broken quote ran into are read (and
    /// judged) on their own.
    fn resume_after_first_line(&mut self, start: u64, raw_lines: Vec<Vec<u8>>) {
        for (i, raw) in raw_lines.into_iter().enumerate().skip(1).rev() {
            self.replay.push_front((start + i as u64, raw));
        }
    }

    /// Reads one record. `None` at end of input.
    fn record(&mut self) -> Result<Option<Record>, CsvError> {
        let Some((start, first)) = self.next_line()? else { return Ok(None) };
        let mut raw_lines = vec![first];
        let mut state = QuoteState::FieldStart;
        let mut size = 0;
        while let Some(last) = raw_lines.last() {
            size += last.len();
            state = scan(state, last);
            if state != QuoteState::InQuotes {
                break;
            }
            if size > MAX_RECORD_BYTES {
                return Ok(Some(Record {
                    start,
                    fields: Err(format!(
                        "a quoted field is never closed (record longer than {MAX_RECORD_BYTES} bytes)"
                    )),
                    raw_lines,
                }));
            }
            match self.next_line()? {
                Some((_, raw)) => raw_lines.push(raw),
                None => {
                    return Ok(Some(Record { start, fields: Err("a quoted field is never closed".into()), raw_lines }))
                }
            }
        }
        let mut raw: Vec<u8> = raw_lines.concat();
        while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            raw.pop();
        }
        let fields = match String::from_utf8(raw) {
            Ok(text) => split_fields(&text),
            Err(_) => Err("not valid UTF-8".into()),
        };
        Ok(Some(Record { start, fields, raw_lines }))
    }
}

/// Where a scan of a record stands, as far as quoting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    /// At the start of a field: a quote here opens a quoted field.
    FieldStart,
    /// Inside an unquoted field: a quote here is an error, not an opening.
    Unquoted,
    /// Inside a quoted field.
    InQuotes,
    /// Just after a quote inside a quoted field (a closing quote, or the
    /// first of a doubled one).
    QuoteInQuotes,
}

/// Advances the quoting state over one physical line (RFC 4180).
fn scan(mut state: QuoteState, line: &[u8]) -> QuoteState {
    use QuoteState::*;
    for &b in line {
        state = match (state, b) {
            (FieldStart, b'"') => InQuotes,
            (FieldStart | Unquoted, b',') => FieldStart,
            (FieldStart | Unquoted, _) => Unquoted,
            (InQuotes, b'"') => QuoteInQuotes,
            (InQuotes, _) => InQuotes,
            // A doubled quote: still inside.
            (QuoteInQuotes, b'"') => InQuotes,
            // The field was closed; what follows is judged by split_fields.
            (QuoteInQuotes, b',') => FieldStart,
            (QuoteInQuotes, _) => Unquoted,
        };
    }
    state
}

/// Parses a plan type as written in the CSV.
pub fn parse_plan_type(s: &str) -> Option<PlanType> {
    let s = s.trim().to_ascii_uppercase();
    let s = s.strip_prefix("PLAN_TYPE_").unwrap_or(&s);
    match s {
        "CHILD_PROTECTION" | "CPP" => Some(PlanType::ChildProtection),
        "LOOKED_AFTER" | "LAC" => Some(PlanType::LookedAfter),
        "UNBORN_CHILD_PROTECTION" | "UCPP" => Some(PlanType::UnbornChildProtection),
        _ => None,
    }
}

/// Splits one record into fields, undoing RFC 4180 quoting.
fn split_fields(record: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = record.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_start => {
                quoted = true;
                at_start = false;
            }
            (false, '"') => return Err("a quote inside an unquoted field".into()),
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                match chars.peek() {
                    None | Some(',') => {}
                    Some(_) => return Err("text after a closing quote".into()),
                }
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
            }
            (_, c) => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err("a quoted field is never closed".into());
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<(u64, Result<Plan, CsvError>)>;

    fn read(s: &str) -> Result<Rows, CsvError> {
        Ok(PlanReader::new(s.as_bytes())?.collect())
    }

    #[test]
    fn reads_a_file_with_quoting_and_any_column_order() {
        let csv = "nhs_number,local_reference,plan_type,start_date,team_name,email\r\n\
                   9990000018,MCR-1,CPP,2025-01-10,\"Front Door, North\",a@b.gov.uk\r\n\
                   \r\n\
                   9990000026,\"MCR \"\"2\"\"\",UNBORN_CHILD_PROTECTION,2025-02-01,\"Two\nlines\",x@y.gov.uk\n";
        let rows = read(csv).unwrap();
        assert_eq!(rows.len(), 2);
        let (line, first) = &rows[0];
        let first = first.as_ref().unwrap();
        assert_eq!(*line, 2);
        assert_eq!(first.local_reference, "MCR-1");
        assert_eq!(first.plan_type, PlanType::ChildProtection as i32);
        assert_eq!(first.contact.as_ref().unwrap().team_name, "Front Door, North");
        let (line, second) = &rows[1];
        let second = second.as_ref().unwrap();
        assert_eq!(*line, 4);
        assert_eq!(second.local_reference, "MCR \"2\"");
        assert_eq!(second.contact.as_ref().unwrap().team_name, "Two\nlines");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(body in "(?s).{0,400}") {
            let text = format!("local_reference,nhs_number,plan_type,start_date\n{body}");
            if let Ok(reader) = PlanReader::new(text.as_bytes()) {
                for _ in reader {}
            }
            let _ = PlanReader::new(body.as_bytes()).map(|r| r.count());
        }
    }

    #[test]
    fn reports_file_problems_with_their_line() {
        assert!(read("").is_err());
        assert!(read("local_reference,colour\n").unwrap_err().message.contains("unknown column"));
        assert!(read("local_reference,nhs_number\n").unwrap_err().message.contains("plan_type"));
        let rows = read("local_reference,nhs_number,plan_type,start_date\nA,1,CPP\nB,2,XYZ,2025-01-01\n").unwrap();
        assert_eq!(rows[0].1.as_ref().unwrap_err().line, 2);
        assert_eq!(rows[1].1.as_ref().unwrap_err().field, Some("plan_type"));
        let rows = read("local_reference,nhs_number,plan_type,start_date\n\"A,1,CPP,2025-01-01\n").unwrap();
        assert!(rows[0].1.as_ref().unwrap_err().message.contains("never closed"));
        let e = rows_of("A,1,XYZ,2025-01-01\n")[0].1.clone().unwrap_err();
        assert_eq!(e.field, Some("plan_type"));
        assert!(e.to_string().starts_with("line 2, field plan_type: must be"), "{e}");
    }

    const HEADER: &str = "local_reference,nhs_number,plan_type,start_date\n";

    fn rows_of(body: &str) -> Vec<(u64, Result<Plan, CsvError>)> {
        read(&format!("{HEADER}{body}")).unwrap()
    }

    fn lines_and_refs(rows: &[(u64, Result<Plan, CsvError>)]) -> Vec<(u64, String)> {
        rows.iter()
            .map(|(l, r)| {
                (*l, r.as_ref().map(|p| p.local_reference.clone()).unwrap_or_else(|e| format!("ERR {}", e.line)))
            })
            .collect()
    }

    #[test]
    fn blank_spreadsheet_rows_are_skipped_and_counted() {
        let text = format!("{HEADER}A,1,CPP,2025-01-01\n,,,\n , ,,\r\n\nB,2,CPP,2025-01-01\n,,,");
        let mut reader = PlanReader::new(text.as_bytes()).unwrap();
        let rows: Vec<_> = reader.by_ref().collect();
        assert_eq!(lines_and_refs(&rows), vec![(2, "A".into()), (6, "B".into())]);
        assert_eq!(reader.blank_rows(), 4);
    }

    #[test]
    fn a_stray_quote_is_an_error_of_its_own_row_only() {
        let rows = rows_of("A,1,CPP,2025-01-01\nB,O\"Brien,CPP,2025-01-01\nC,3,CPP,2025-01-01\nD,4,CPP,2025-01-01\n");
        assert_eq!(lines_and_refs(&rows), vec![(2, "A".into()), (3, "ERR 3".into()), (4, "C".into()), (5, "D".into())]);
        assert!(rows[1].1.as_ref().unwrap_err().message.contains("quote inside an unquoted field"));
    }

    #[test]
    fn an_unclosed_quote_is_reported_on_its_row_and_later_rows_are_still_read() {
        let rows = rows_of("A,1,CPP,2025-01-01\nB,\"2,CPP,2025-01-01\nC,3,CPP,2025-01-01\nD,4,CPP,2025-01-01\n");
        assert_eq!(lines_and_refs(&rows), vec![(2, "A".into()), (3, "ERR 3".into()), (4, "C".into()), (5, "D".into())]);
        // A quote closed on a later line with the wrong number of fields: the same.
        let rows = rows_of("B,\"2,CPP,2025-01-01\nC,3\",CPP,2025-01-01,X\nD,4,CPP,2025-01-01\n");
        assert_eq!(lines_and_refs(&rows), vec![(2, "ERR 2".into()), (3, "ERR 3".into()), (4, "D".into())]);
        // Non-UTF-8 text is its row's problem alone.
        let mut bytes = HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(b"A,\xff,CPP,2025-01-01\nB,2,CPP,2025-01-01\n");
        let rows: Vec<_> = PlanReader::new(&bytes[..]).unwrap().collect();
        assert_eq!(lines_and_refs(&rows), vec![(2, "ERR 2".into()), (3, "B".into())]);
    }
}
