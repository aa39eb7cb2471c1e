// Package siem exports Vigil's monitoring alerts (findings and incidents) to
// the systems a security operations team already runs, through a durable
// outbox:
//
//   - syslog (RFC 5424) over TCP or TLS with octet-counting framing
//     (RFC 6587 §3.4.1, RFC 5425), each message carrying a CEF payload;
//   - OCSF 1.1 JSON (Detection Finding 2004, Incident Finding 2005) POSTed
//     to a webhook;
//   - the Alertmanager API v2 (POST /api/v2/alerts).
//
// An [Outbox] stores every alert in append-only, checksummed segment files
// before Enqueue returns, and one goroutine per [Sink] delivers them in
// order, retrying with capped exponential backoff while the receiver is
// down and resuming after a restart from the last acknowledged record: at
// least once, with no gaps except those it counts (the disk bound, a
// receiver rejecting a record as malformed, a corrupt file).
//
// The package defines its own [Alert] value so that it depends on no other
// package of Vigil (the monitor converts its findings and incidents); it
// imports only the standard library.
package siem
