package siem

import (
	"strings"
	"testing"
)

func TestConfig(t *testing.T) {
	pki := newTestPKI(t)
	cfg := Config{
		Syslog:       "tls://127.0.0.1:6514",
		SyslogCA:     pki.caFile,
		Webhook:      "https://siem.example/ocsf",
		WebhookToken: "t",
		Alertmanager: "http://am:9093",
		Hostname:     "vigil-1",
	}
	if !cfg.Enabled() {
		t.Error("not enabled")
	}
	o, err := NewFromConfig(t.TempDir(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	var names []string
	for _, s := range o.Stats().Sinks {
		names = append(names, s.Name)
	}
	if strings.Join(names, ",") != "syslog,ocsf,alertmanager" {
		t.Errorf("sinks %v", names)
	}

	for _, bad := range []Config{
		{Syslog: "udp://x:514"},
		{Syslog: "tcp://x:514", SyslogCA: pki.caFile},
		{SyslogCA: pki.caFile},
		{WebhookToken: "t"},
		{Webhook: "siem.example/ocsf"},
		{Alertmanager: "am:9093"},
		{Syslog: "tcp://x:514", MaxBytes: 10},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v: want an error", bad)
		} else if !strings.Contains(err.Error(), "--") && !strings.Contains(err.Error(), "size") {
			t.Errorf("%+v: the error %q does not name the flag", bad, err)
		}
	}
}
