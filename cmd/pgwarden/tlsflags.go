package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/clienttls"
	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// tlsClientFlags are the TLS flags connect and probe share, named after
// libpq's connection parameters.
type tlsClientFlags struct {
	SSLRootCert     string
	SSLCert, SSLKey string
	ServerName      string
	DirectTLS       bool
}

// register defines the flags; peer names what is verified, defaultName
// where the checked name comes from, certNote says more about --sslcert.
func (f *tlsClientFlags) register(fs *pflag.FlagSet, peer, defaultName, certNote string) {
	fs.StringVar(&f.SSLRootCert, "sslrootcert", "", "CA certificates (PEM) that verify "+peer+" (default: the system roots)")
	fs.StringVar(&f.SSLCert, "sslcert", "", "client certificate chain (PEM) to present when asked"+certNote)
	fs.StringVar(&f.SSLKey, "sslkey", "", "its private key (PEM)")
	fs.StringVar(&f.ServerName, "server-name", "", "name the certificate of "+peer+" must carry (default: "+defaultName+")")
	fs.BoolVar(&f.DirectTLS, "direct-tls", false, "start TLS at once with ALPN postgresql (PostgreSQL 17 sslnegotiation=direct) instead of an SSLRequest")
}

// config loads the files the flags name into a clienttls.Config; host is
// the name verified without --server-name. The loader (nil without
// --sslcert) can watch the certificate files. Every problem is returned.
func (f *tlsClientFlags) config(host string, log *zap.Logger) (clienttls.Config, *certs.Loader, error) {
	cfg := clienttls.Config{ServerName: f.ServerName, DirectTLS: f.DirectTLS}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	var errs []error
	var err error
	if cfg.RootCAs, err = clienttls.LoadRootCAs(f.SSLRootCert); err != nil {
		errs = append(errs, err)
	}
	var loader *certs.Loader
	switch {
	case (f.SSLCert == "") != (f.SSLKey == ""):
		errs = append(errs, errors.New("--sslcert and --sslkey go together: give both or neither"))
	case f.SSLCert != "":
		if loader, err = certs.NewLoader(f.SSLCert, f.SSLKey, log); err != nil {
			errs = append(errs, err)
		} else {
			cfg.ClientCertificate = loader.Current
		}
	}
	return cfg, loader, errors.Join(errs...)
}

// clientUsageFail prints a usage or configuration problem of connect or
// probe, one line each, and returns exit status 2 (never one of probe's
// layer statuses 10-17).
func clientUsageFail(stderr io.Writer, cmd string, err error) int {
	for _, line := range strings.Split(fielderr.Render(err, clientFlagNames), "\n") {
		fmt.Fprintf(stderr, "pgwarden %s: %s\n", cmd, line)
	}
	return exitUsage
}

// parseClientFlags parses connect's or probe's arguments; done reports that
// the command should return code now (help, or a usage error).
func parseClientFlags(fs *pflag.FlagSet, args []string, cmd, usage string, stdout, stderr io.Writer) (code int, done bool) {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		fmt.Fprint(stdout, usage+fs.FlagUsages())
		return exitOK, true
	case err != nil:
		return clientUsageFail(stderr, cmd, fmt.Errorf("%w (pgwarden %s --help lists the flags)", err, cmd)), true
	}
	return 0, false
}
