package probe

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/pgwarden/pgwarden/internal/clienttls"
)

// Status is a layer's verdict.
type Status string

// Layer verdicts, printed as they are.
const (
	StatusOK   Status = "ok"
	StatusFail Status = "FAIL"
	StatusSkip Status = "skip"
)

// Layer is what every layer reports: its verdict and the evidence in words.
type Layer struct {
	Status Status `json:"status"`
	Detail string `json:"detail"`
}

// ResolveLayer is the name lookup.
type ResolveLayer struct {
	Layer
	Addresses []string `json:"addresses,omitempty"`
}

// TCPLayer is the TCP connection.
type TCPLayer struct {
	Layer
	Address      string  `json:"address,omitempty"`
	Source       string  `json:"source,omitempty"`
	Milliseconds float64 `json:"ms,omitempty"`
}

// NegotiateLayer is the SSLRequest exchange.
type NegotiateLayer struct {
	Layer
	// Reply is the server's answer: "S", "N", "E" (an error), another
	// byte in hex, or "direct" for direct TLS.
	Reply string `json:"reply,omitempty"`
}

// TLSLayer is the TLS handshake.
type TLSLayer struct {
	Layer
	Version string `json:"version,omitempty"`
	Cipher  string `json:"cipher,omitempty"`
	ALPN    string `json:"alpn,omitempty"`
}

// CertificateLayer is the server's certificate and its verification.
type CertificateLayer struct {
	Layer
	Subject    string     `json:"subject,omitempty"`
	Issuer     string     `json:"issuer,omitempty"`
	SANs       []string   `json:"sans,omitempty"`
	NotAfter   *time.Time `json:"not_after,omitempty"`
	DaysLeft   *int       `json:"days_left,omitempty"`
	ServerName string     `json:"server_name,omitempty"`
	NameOK     *bool      `json:"name_ok,omitempty"`
	ChainOK    *bool      `json:"chain_ok,omitempty"`
}

// ClientCertificateLayer is the client certificate: asked for, sent,
// accepted.
type ClientCertificateLayer struct {
	Layer
	Requested bool   `json:"requested"`
	Sent      string `json:"sent,omitempty"`
}

// AuthLayer is the startup and authentication.
type AuthLayer struct {
	Layer
	User     string `json:"user,omitempty"`
	Database string `json:"database,omitempty"`
	SQLState string `json:"sqlstate,omitempty"`
	Message  string `json:"message,omitempty"`
}

// QueryLayer is the SELECT 1 round trip.
type QueryLayer struct {
	Layer
	SQLState     string  `json:"sqlstate,omitempty"`
	Milliseconds float64 `json:"ms,omitempty"`
}

// Result is one probe, one member per layer in order. Its JSON form is what
// `pgwarden probe --json` prints.
type Result struct {
	Resolve           ResolveLayer           `json:"resolve"`
	TCP               TCPLayer               `json:"tcp"`
	Negotiate         NegotiateLayer         `json:"negotiate"`
	TLS               TLSLayer               `json:"tls"`
	Certificate       CertificateLayer       `json:"certificate"`
	ClientCertificate ClientCertificateLayer `json:"client-certificate"`
	Auth              AuthLayer              `json:"auth"`
	Query             QueryLayer             `json:"query"`
}

// layers returns the layers in order, parallel to clienttls.Layers.
func (r *Result) layers() []*Layer {
	return []*Layer{&r.Resolve.Layer, &r.TCP.Layer, &r.Negotiate.Layer, &r.TLS.Layer,
		&r.Certificate.Layer, &r.ClientCertificate.Layer, &r.Auth.Layer, &r.Query.Layer}
}

// layer returns the named layer.
func (r *Result) layer(name string) *Layer {
	for i, n := range clienttls.Layers {
		if n == name {
			return r.layers()[i]
		}
	}
	panic("probe: unknown layer " + name)
}

// ExitStatus is 0 when no layer failed, else 10 + the index of the first
// failing layer: resolve 10, tcp 11, negotiate 12, tls 13, certificate 14,
// client-certificate 15, auth 16, query 17.
func (r *Result) ExitStatus() int {
	for i, l := range r.layers() {
		if l.Status == StatusFail {
			return 10 + i
		}
	}
	return 0
}

// FirstFailure names the first failing layer, or "".
func (r *Result) FirstFailure() string {
	for i, l := range r.layers() {
		if l.Status == StatusFail {
			return clienttls.Layers[i]
		}
	}
	return ""
}

// WriteText prints one line per layer: name, verdict, evidence.
func (r *Result) WriteText(w io.Writer) error {
	for i, l := range r.layers() {
		if _, err := fmt.Fprintf(w, "%-19s %-5s %s\n", clienttls.Layers[i], l.Status, l.Detail); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSON prints the result as one JSON object, one member per layer.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
