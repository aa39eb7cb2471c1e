// Package examples holds example deployments of Vigil as plain files, and
// embeds them so that commands such as `vigil dev` and tests can load them
// without touching the file system.
//
// It holds data only and imports nothing from this module.
package examples

import _ "embed"

// SmartCity is the smart-city topology document (vigil/v1): two districts
// of street lights, air-quality sensors and traffic cameras behind four
// gateways, the cloud services they use, and the least-privilege flows
// between them. It validates with topology.Load.
//
//go:embed smart-city/topology.yaml
var SmartCity []byte
