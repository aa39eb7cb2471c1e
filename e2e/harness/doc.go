// Package harness builds the vigil binary and runs clusters of real `vigil
// serve` processes on 127.0.0.1 for end-to-end tests and load tools: it
// starts, kills, stops and restarts members, hands out typed API clients,
// and generates valid topology documents of any size.
//
// It is an ordinary (non-test) package so that load tools can use it too.
// It only ever signals processes it started itself, by their PID, and every
// wait it does is bounded. Of the main module it imports only the public
// packages a client uses (api, topology), and spire/spiretest to run the real SPIRE; members run as separate
// processes, never in-process.
package harness
