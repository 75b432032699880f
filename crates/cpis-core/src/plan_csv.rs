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

use cpis_proto::common::v1::{ContactDetails, PlanType};
use cpis_proto::registry::v1::Plan;
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
#[error("line {line}: {message}")]
pub struct CsvError {
    /// 1-based line where the record starts.
    pub line: u64,
    /// What is wrong; never quotes field contents.
    pub message: String,
}

/// Reads plans from a CSV stream.
pub struct PlanReader<R> {
    input: R,
    line: u64,
    columns: Vec<usize>,
    done: bool,
}

impl<R: BufRead> PlanReader<R> {
    /// Reads and checks the header row.
    pub fn new(mut input: R) -> Result<Self, CsvError> {
        let mut line = 0;
        let header = loop {
            match read_record(&mut input, &mut line)? {
                None => {
                    return Err(CsvError { line: 1, message: "the file is empty: a header row is required".into() })
                }
                Some((_, fields)) if fields.iter().all(|f| f.trim().is_empty()) => continue,
                Some((_, fields)) => break fields,
            }
        };
        let mut columns = Vec::with_capacity(header.len());
        for name in &header {
            let name = name.trim().trim_start_matches('\u{feff}').to_ascii_lowercase();
            let Some(index) = COLUMNS.iter().position(|c| *c == name) else {
                return Err(CsvError {
                    line,
                    message: format!("unknown column {name:?}; expected some of {}", COLUMNS.join(", ")),
                });
            };
            if columns.contains(&index) {
                return Err(CsvError { line, message: format!("column {name:?} appears twice") });
            }
            columns.push(index);
        }
        for required in REQUIRED {
            let index = COLUMNS.iter().position(|c| c == required).unwrap_or(usize::MAX);
            if !columns.contains(&index) {
                return Err(CsvError { line, message: format!("the header has no {required:?} column") });
            }
        }
        Ok(Self { input, line, columns, done: false })
    }

    fn to_plan(&self, line: u64, fields: Vec<String>) -> Result<Plan, CsvError> {
        if fields.len() != self.columns.len() {
            return Err(CsvError {
                line,
                message: format!("expected {} fields, found {}", self.columns.len(), fields.len()),
            });
        }
        let mut values: [String; 11] = Default::default();
        for (field, &column) in fields.into_iter().zip(&self.columns) {
            values[column] = field.trim().to_string();
        }
        let [local_reference, nhs_number, date_of_birth, plan_type, start_date, end_date, expected_delivery_date, team_name, office_phone, emergency_duty_phone, email] =
            values;
        let plan_type = parse_plan_type(&plan_type).ok_or_else(|| CsvError {
            line,
            message: "plan_type must be CHILD_PROTECTION, LOOKED_AFTER or UNBORN_CHILD_PROTECTION".into(),
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
            if self.done {
                return None;
            }
            match read_record(&mut self.input, &mut self.line) {
                Ok(None) => return None,
                Ok(Some((_, fields))) if fields.len() == 1 && fields[0].trim().is_empty() => continue,
                Ok(Some((start, fields))) => return Some((start, self.to_plan(start, fields))),
                Err(e) => {
                    // A broken quote leaves no reliable record boundary: stop here.
                    self.done = true;
                    return Some((e.line, Err(e)));
                }
            }
        }
    }
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

/// Reads one record: its starting line and fields. `None` at end of input.
fn read_record(input: &mut impl BufRead, line: &mut u64) -> Result<Option<(u64, Vec<String>)>, CsvError> {
    let start = *line + 1;
    let mut raw = Vec::new();
    let mut in_quotes = false;
    loop {
        let before = raw.len();
        let n = input
            .read_until(b'\n', &mut raw)
            .map_err(|e| CsvError { line: start, message: format!("cannot read the file: {e}") })?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            if in_quotes {
                return Err(CsvError { line: start, message: "a quoted field is never closed".into() });
            }
            break;
        }
        *line += 1;
        in_quotes ^= raw[before..].iter().filter(|b| **b == b'"').count() % 2 == 1;
        if raw.len() > MAX_RECORD_BYTES {
            return Err(CsvError { line: start, message: format!("record longer than {MAX_RECORD_BYTES} bytes") });
        }
        if !in_quotes {
            break;
        }
    }
    while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        raw.pop();
    }
    let text = String::from_utf8(raw).map_err(|_| CsvError { line: start, message: "not valid UTF-8".into() })?;
    split_fields(&text).map(|f| Some((start, f))).map_err(|message| CsvError { line: start, message })
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

    fn read(s: &str) -> Result<Vec<(u64, Result<Plan, CsvError>)>, CsvError> {
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
        assert!(rows[1].1.as_ref().unwrap_err().message.contains("plan_type"));
        let rows = read("local_reference,nhs_number,plan_type,start_date\n\"A,1,CPP,2025-01-01\n").unwrap();
        assert!(rows[0].1.as_ref().unwrap_err().message.contains("never closed"));
    }
}
