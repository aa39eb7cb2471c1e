package siem

import (
	"errors"
	"fmt"
	"log/slog"
)

// Config is what a member's flags say about SIEM export.
type Config struct {
	// Syslog is --siem-syslog: tcp://host:port or tls://host:port.
	Syslog string
	// SyslogCA is --siem-syslog-ca: PEM CA certificates for tls://.
	SyslogCA string
	// SyslogCert and SyslogKey are an optional client certificate for
	// tls:// receivers that ask for one.
	SyslogCert, SyslogKey string
	// Webhook is --siem-webhook: the URL OCSF events are POSTed to.
	Webhook string
	// WebhookToken is the webhook's bearer token (optional).
	WebhookToken string
	// Alertmanager is --alertmanager-url: Alertmanager's base URL.
	Alertmanager string
	// Hostname is the member's ID: syslog HOSTNAME, CEF dvchost, and the
	// member field of OCSF and Alertmanager alerts.
	Hostname string
	// Version is the product version reported (default DefaultVersion()).
	Version string
	// MaxBytes bounds the outbox (default DefaultMaxBytes).
	MaxBytes int64
}

// Enabled reports whether cfg names any receiver.
func (c Config) Enabled() bool {
	return c.Syslog != "" || c.Webhook != "" || c.Alertmanager != ""
}

// Validate checks every setting (reading the TLS files once).
func (c Config) Validate() error {
	_, err := c.Sinks()
	return err
}

// Sinks builds the sinks cfg names: "syslog", "ocsf" and "alertmanager".
func (c Config) Sinks() ([]Sink, error) {
	var sinks []Sink
	var errs []error
	if c.Syslog != "" {
		s, err := NewSyslog(SyslogConfig{
			URL:      c.Syslog,
			CAFile:   c.SyslogCA,
			CertFile: c.SyslogCert,
			KeyFile:  c.SyslogKey,
			Hostname: c.Hostname,
			Version:  c.Version,
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("--siem-syslog: %w", err))
		} else {
			sinks = append(sinks, s)
		}
	} else if c.SyslogCA != "" || c.SyslogCert != "" || c.SyslogKey != "" {
		errs = append(errs, errors.New("--siem-syslog-ca (or a client certificate) needs --siem-syslog tls://host:port"))
	}
	if c.Webhook != "" {
		w, err := NewWebhook(WebhookConfig{URL: c.Webhook, Token: c.WebhookToken, Hostname: c.Hostname, Version: c.Version})
		if err != nil {
			errs = append(errs, fmt.Errorf("--siem-webhook: %w", err))
		} else {
			sinks = append(sinks, w)
		}
	} else if c.WebhookToken != "" {
		errs = append(errs, errors.New("a webhook token needs --siem-webhook"))
	}
	if c.Alertmanager != "" {
		am, err := NewAlertmanager(AlertmanagerConfig{URL: c.Alertmanager, Hostname: c.Hostname})
		if err != nil {
			errs = append(errs, fmt.Errorf("--alertmanager-url: %w", err))
		} else {
			sinks = append(sinks, am)
		}
	}
	if c.MaxBytes != 0 && c.MaxBytes < minMaxBytes {
		errs = append(errs, fmt.Errorf("siem: outbox size %d is below the minimum of %d", c.MaxBytes, minMaxBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return sinks, nil
}

// NewFromConfig opens the outbox in dir with the sinks cfg names. Without
// any, it returns an outbox that stores nothing (Enabled is false) and
// touches no file. Call Run to deliver and Close at the end.
func NewFromConfig(dir string, cfg Config, log *slog.Logger) (*Outbox, error) {
	sinks, err := cfg.Sinks()
	if err != nil {
		return nil, err
	}
	return Open(dir, sinks, Options{MaxBytes: cfg.MaxBytes, Logger: log})
}
