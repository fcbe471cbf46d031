//! Reading one DNS response against the question asked: the records it answers with, the
//! CNAME chain it follows to them, a negative answer, or why it cannot be the answer. No
//! sockets and no state beyond the chain followed so far; [`super::Dns`] asks, this module
//! judges.
//!
//! Why below hickory's resolver: `Resolver::lookup` (hickory-resolver 0.26.3) gives every
//! NOERROR response that holds no record of the asked name and type the same
//! `NoRecordsFound` as an empty answer (NODATA), whether its records are for other names
//! only, of other types only, or a CNAME chain that loops, which it follows for 8 queries
//! (`caching_client.rs`: `handle_noerror`'s match on name and type at line 399, the
//! `NoRecords::new` at line 513, `MAX_QUERY_DEPTH` at line 62). When one record matches it
//! returns the whole answer section, other names' records included (line 462); it follows
//! an SRV record in an A answer as if it were a CNAME (line 364); and over TCP it takes a
//! reply to another question (hickory-net's `DnsMultiplexer` matches the id only; its UDP
//! stream drops such replies, `udp_client_stream.rs` line 321, and the lookup times out).
//! So the DNS source asks the resolver's name-server pool, which sends, retransmits, falls
//! back to TCP and turns error codes and empty answers into errors
//! (`name_server.rs` line 153, hickory-net `error.rs` line 427), and reads the rest here.

use std::fmt::Write as _;
use std::time::Duration;

use hickory_resolver::net::NoRecords;
use hickory_resolver::proto::op::{DnsResponse, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::CNAME;
use hickory_resolver::proto::rr::{Name, RData, Record};

/// Most names in a chain, the name asked included. hickory stops at 8 queries; a CNAME chain
/// that long is a misconfiguration.
pub const MAX_CHAIN: usize = 8;

/// The names followed from the name asked through CNAMEs, and the smallest TTL on the way.
#[derive(Debug, Clone)]
pub struct Chain {
    names: Vec<Name>,
    ttl: u32,
}

impl Chain {
    /// A chain at `name`, nothing followed yet.
    pub fn new(name: Name) -> Self {
        Self {
            names: vec![name],
            ttl: u32::MAX,
        }
    }

    /// The name to ask next.
    pub fn end(&self) -> &Name {
        // `new` puts one name in, and nothing takes one out.
        &self.names[self.names.len() - 1]
    }

    /// Moves the end to `target`, unless that makes a loop or too long a chain.
    fn follow(&mut self, target: &Name, ttl: u32) -> Result<(), String> {
        if self.names.contains(target) {
            return Err(format!("CNAME loop: {} -> {target}", self.path()));
        }
        if self.names.len() >= MAX_CHAIN {
            return Err(format!(
                "CNAME chain of more than {MAX_CHAIN} names without records: {} -> {target}",
                self.path()
            ));
        }
        self.names.push(target.clone());
        self.ttl = self.ttl.min(ttl);
        Ok(())
    }

    fn path(&self) -> String {
        let names: Vec<String> = self.names.iter().map(Name::to_string).collect();
        names.join(" -> ")
    }
}

/// What one response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Records of the type asked, owned by the chain's end.
    Records {
        /// The records, and nothing else of the answer section.
        records: Vec<Record>,
        /// The A records of the additional section (SRV targets' addresses).
        glue: Vec<Record>,
        /// The smallest TTL of the records and of the CNAMEs that led to them.
        ttl: Duration,
    },
    /// The chain moved on to a name this response does not resolve: ask that name.
    Follow,
    /// The name at the end of the chain does not exist, or has no records of the type.
    Negative {
        /// True for NXDOMAIN.
        nxdomain: bool,
        /// The negative-caching TTL from the SOA, when there is one.
        ttl: Option<Duration>,
    },
    /// Not an answer to the question.
    Broken(String),
}

/// Reads `response` to `query`, the chain's end; moves the chain along the CNAMEs it holds.
pub fn read(query: &Query, response: &DnsResponse, chain: &mut Chain) -> Reading {
    if response.queries.as_slice() != std::slice::from_ref(query) {
        return Reading::Broken(format!(
            "the reply is to another question ({})",
            questions(&response.queries)
        ));
    }
    let code = response.response_code;
    if !matches!(code, ResponseCode::NoError | ResponseCode::NXDomain) {
        return Reading::Broken(format!("response code {code}"));
    }
    let asked = query.name();
    loop {
        if let Some(found) = records_at_end(query, response, chain) {
            return found;
        }
        match next_cname(response, chain.end()) {
            Ok(Some((target, ttl))) => {
                if let Err(reason) = chain.follow(target, ttl) {
                    return Reading::Broken(reason);
                }
            }
            Ok(None) => break,
            Err(reason) => return Reading::Broken(reason),
        }
    }
    if chain.end() == asked {
        // The pool turns an empty answer section into a negative answer; this one has
        // records, and none is for the name asked.
        return Reading::Broken(format!(
            "no {} record for {asked} in {}",
            query.query_type(),
            records(&response.answers)
        ));
    }
    if code == ResponseCode::NXDomain {
        // The code is about the last name of the chain (RFC 6604 section 3).
        return Reading::Negative {
            nxdomain: true,
            ttl: negative_ttl(response.negative_ttl()),
        };
    }
    Reading::Follow
}

/// The records of the type asked for the chain's end, with the additional section's A
/// records as glue, if `response` has any.
fn records_at_end(query: &Query, response: &DnsResponse, chain: &Chain) -> Option<Reading> {
    let end = chain.end();
    let records: Vec<Record> = response
        .answers
        .iter()
        .filter(|record| record.name == *end && record.record_type() == query.query_type())
        .cloned()
        .collect();
    if records.is_empty() {
        return None;
    }
    let ttl = records
        .iter()
        .map(|record| record.ttl)
        .fold(chain.ttl, u32::min);
    let glue = response
        .additionals
        .iter()
        .filter(|record| matches!(record.data, RData::A(_)))
        .cloned()
        .collect();
    Some(Reading::Records {
        records,
        glue,
        ttl: Duration::from_secs(ttl.into()),
    })
}

/// The CNAME of `name` in `response`'s answers, with its TTL: `None` when there is none, an
/// error when there are several.
fn next_cname<'r>(
    response: &'r DnsResponse,
    name: &Name,
) -> Result<Option<(&'r Name, u32)>, String> {
    let mut cnames = response
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::CNAME(CNAME(target)) if record.name == *name => Some((target, record.ttl)),
            _ => None,
        });
    let first = cnames.next();
    if first.is_some() && cnames.next().is_some() {
        return Err(format!("more than one CNAME for {name}"));
    }
    Ok(first)
}

/// Reads a response the pool found no records in (NXDOMAIN, or NOERROR with an empty answer
/// section): a negative answer if it is to `query`.
pub fn read_no_records(query: &Query, no_records: &NoRecords) -> Reading {
    if *no_records.query != *query {
        return Reading::Broken(format!(
            "the reply is to another question ({})",
            questions(std::slice::from_ref(&no_records.query))
        ));
    }
    Reading::Negative {
        nxdomain: no_records.response_code == ResponseCode::NXDomain,
        ttl: negative_ttl(no_records.negative_ttl),
    }
}

fn negative_ttl(ttl: Option<u32>) -> Option<Duration> {
    ttl.map(|ttl| Duration::from_secs(ttl.into()))
}

/// The questions, in words: `A other.internal.`, or `none`. An empty question reads as the
/// root, as hickory decodes a reply with no question section over TCP.
fn questions(queries: &[Query]) -> String {
    if queries.is_empty() || queries.iter().all(|query| query.name().is_root()) {
        return "none".into();
    }
    let questions: Vec<String> = queries
        .iter()
        .map(|query| format!("{} {}", query.query_type(), query.name()))
        .collect();
    questions.join(", ")
}

/// The answer section in words, up to four records: `an answer of 2 records: A
/// other.internal., TXT name.internal.`.
fn records(answers: &[Record]) -> String {
    const SHOWN: usize = 4;
    if answers.is_empty() {
        return "an empty answer section".into();
    }
    let plural = if answers.len() == 1 { "" } else { "s" };
    let mut text = format!("an answer of {} record{plural}: ", answers.len());
    for (at, record) in answers.iter().take(SHOWN).enumerate() {
        let separator = if at == 0 { "" } else { ", " };
        let _ = write!(text, "{separator}{} {}", record.record_type(), record.name);
    }
    if answers.len() > SHOWN {
        text.push_str(", ...");
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_resolver::proto::op::{Message, MessageType, OpCode};
    use hickory_resolver::proto::rr::RecordType;
    use hickory_resolver::proto::rr::rdata::{A, TXT};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn a(owner: &str, ttl: u32, last_octet: u8) -> Record {
        let ip = Ipv4Addr::new(10, 0, 0, last_octet);
        Record::from_rdata(name(owner), ttl, RData::A(A(ip)))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn txt(owner: &str) -> Record {
        Record::from_rdata(name(owner), 5, RData::TXT(TXT::new(vec!["v".into()])))
    }

    fn query(owner: &str) -> Query {
        Query::query(name(owner), RecordType::A)
    }

    /// A NOERROR response to `question` with `answers`.
    fn response(question: &Query, answers: Vec<Record>) -> DnsResponse {
        let mut message = Message::new(7, MessageType::Response, OpCode::Query);
        message.add_query(question.clone());
        message.add_answers(answers);
        DnsResponse::from_message(message).unwrap()
    }

    /// Reads `answers` as the response to an A query of `owner`, from a fresh chain.
    fn read_fresh(owner: &str, answers: Vec<Record>) -> (Reading, Chain) {
        let question = query(owner);
        let mut chain = Chain::new(name(owner));
        let reading = read(&question, &response(&question, answers), &mut chain);
        (reading, chain)
    }

    fn broken(reading: &Reading) -> &str {
        match reading {
            Reading::Broken(reason) => reason,
            other => panic!("not broken: {other:?}"),
        }
    }

    #[test]
    fn records_of_the_name_are_the_answer_and_other_names_are_left_out() {
        let answers = vec![a("name.internal.", 5, 1), a("other.internal.", 1, 9)];
        let (reading, _) = read_fresh("name.internal.", answers);
        let Reading::Records { records, ttl, .. } = reading else {
            panic!("{reading:?}");
        };
        assert_eq!(records, vec![a("name.internal.", 5, 1)]);
        assert_eq!(ttl, Duration::from_secs(5));
    }

    #[test]
    fn records_for_other_names_only_are_broken() {
        let (reading, _) = read_fresh("name.internal.", vec![a("other.internal.", 5, 1)]);
        assert_eq!(
            broken(&reading),
            "no A record for name.internal. in an answer of 1 record: A other.internal."
        );
    }

    #[test]
    fn records_of_other_types_only_are_broken() {
        let (reading, _) = read_fresh("name.internal.", vec![txt("name.internal.")]);
        assert!(broken(&reading).starts_with("no A record for name.internal."));
    }

    #[test]
    fn a_chain_in_one_response_leads_to_the_records_with_the_smallest_ttl() {
        let answers = vec![
            cname("name.internal.", 2, "b.internal."),
            cname("b.internal.", 30, "c.internal."),
            a("c.internal.", 10, 1),
        ];
        let (reading, chain) = read_fresh("name.internal.", answers);
        let Reading::Records { records, ttl, .. } = reading else {
            panic!("{reading:?}");
        };
        assert_eq!(records, vec![a("c.internal.", 10, 1)]);
        assert_eq!(ttl, Duration::from_secs(2));
        assert_eq!(*chain.end(), name("c.internal."));
    }

    #[test]
    fn a_loop_in_one_response_is_broken() {
        let answers = vec![
            cname("name.internal.", 5, "b.internal."),
            cname("b.internal.", 5, "name.internal."),
        ];
        let (reading, _) = read_fresh("name.internal.", answers);
        assert_eq!(
            broken(&reading),
            "CNAME loop: name.internal. -> b.internal. -> name.internal."
        );
    }

    #[test]
    fn a_loop_across_responses_is_broken() {
        let (reading, mut chain) = read_fresh(
            "name.internal.",
            vec![cname("name.internal.", 5, "b.internal.")],
        );
        assert_eq!(reading, Reading::Follow);
        let next = query("b.internal.");
        let back = response(&next, vec![cname("b.internal.", 5, "name.internal.")]);
        assert!(broken(&read(&next, &back, &mut chain)).starts_with("CNAME loop"));
    }

    #[test]
    fn a_chain_longer_than_the_bound_is_broken() {
        let owner = |n: usize| format!("n{n}.internal.");
        let mut chain = Chain::new(name(&owner(0)));
        let mut readings = Vec::new();
        for n in 0..MAX_CHAIN {
            let question = query(&owner(n));
            let hop = response(&question, vec![cname(&owner(n), 5, &owner(n + 1))]);
            readings.push(read(&question, &hop, &mut chain));
        }
        assert!(
            readings[..MAX_CHAIN - 1]
                .iter()
                .all(|r| *r == Reading::Follow)
        );
        assert!(broken(&readings[MAX_CHAIN - 1]).starts_with("CNAME chain of more than 8"));
    }

    #[test]
    fn nxdomain_at_the_end_of_a_chain_is_an_answer() {
        let question = query("name.internal.");
        let mut message = Message::new(7, MessageType::Response, OpCode::Query);
        message.add_query(question.clone());
        message.add_answer(cname("name.internal.", 5, "gone.internal."));
        message.metadata.response_code = ResponseCode::NXDomain;
        let response = DnsResponse::from_message(message).unwrap();
        let mut chain = Chain::new(name("name.internal."));
        assert_eq!(
            read(&question, &response, &mut chain),
            Reading::Negative {
                nxdomain: true,
                ttl: None
            }
        );
    }

    #[test]
    fn a_reply_to_another_question_is_broken() {
        let question = query("name.internal.");
        let other = query("other.internal.");
        let reply = response(&other, vec![a("name.internal.", 5, 1)]);
        let mut chain = Chain::new(name("name.internal."));
        assert_eq!(
            broken(&read(&question, &reply, &mut chain)),
            "the reply is to another question (A other.internal.)"
        );
    }

    #[test]
    fn two_cnames_for_one_name_are_broken() {
        let answers = vec![
            cname("name.internal.", 5, "b.internal."),
            cname("name.internal.", 5, "c.internal."),
        ];
        let (reading, _) = read_fresh("name.internal.", answers);
        assert_eq!(broken(&reading), "more than one CNAME for name.internal.");
    }

    #[test]
    fn no_records_for_the_question_asked_are_a_negative_answer() {
        let question = query("name.internal.");
        let mut no_records = NoRecords::new(question.clone(), ResponseCode::NXDomain);
        no_records.negative_ttl = Some(5);
        assert_eq!(
            read_no_records(&question, &no_records),
            Reading::Negative {
                nxdomain: true,
                ttl: Some(Duration::from_secs(5))
            }
        );
    }

    #[test]
    fn no_records_for_another_question_are_broken() {
        let question = query("name.internal.");
        let no_records = NoRecords::new(Query::default(), ResponseCode::NoError);
        assert_eq!(
            broken(&read_no_records(&question, &no_records)),
            "the reply is to another question (none)"
        );
    }
}
