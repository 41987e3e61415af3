package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// DefaultExpiryWarning is how close to NotAfter a certificate must be before
// WarnIfExpiring logs about it.
const DefaultExpiryWarning = 14 * 24 * time.Hour

// expiryCheckInterval is how often RunExpiryChecks repeats the warning.
const expiryCheckInterval = 24 * time.Hour

// Loader serves the current server certificate and replaces it on Reload.
// Handshakes read it through an atomic pointer, so a reload affects only
// handshakes that start afterwards; established sessions keep their keys.
type Loader struct {
	certFile, keyFile string
	logger            *zap.Logger
	now               func() time.Time
	debounce          time.Duration // Watch's quiet period; a field so tests can shorten it
	watching          func()        // test hook: called once Watch's watches are in place

	pair atomic.Pointer[keyPair]
	// reloadMu serialises Reload: SIGHUP and the file watcher may fire
	// together, and the unchanged-bytes check must see the pair it compares.
	reloadMu sync.Mutex
}

// NewLoader reads and validates a PEM certificate chain (server certificate
// first) and its private key. Errors name the field (FieldCert, FieldKey),
// the file and the problem, e.g. "key file /x/server.key: reading:
// permission denied". A nil logger means zap.NewNop().
func NewLoader(certFile, keyFile string, logger *zap.Logger) (*Loader, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	l := &Loader{
		certFile: certFile,
		keyFile:  keyFile,
		logger:   logger,
		now:      time.Now,
		debounce: defaultDebounce,
	}
	pair, err := loadKeyPair(certFile, keyFile, l.now())
	if err != nil {
		return nil, err
	}
	l.pair.Store(pair)
	l.logLoaded("certificate loaded", pair)
	return l, nil
}

// GetCertificate is the tls.Config hook. It never blocks: one atomic load.
func (l *Loader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return l.pair.Load().cert, nil
}

// Current is the certificate new handshakes get, with Leaf populated.
func (l *Loader) Current() *tls.Certificate {
	return l.pair.Load().cert
}

// CertFile is the certificate path given to NewLoader.
func (l *Loader) CertFile() string { return l.certFile }

// KeyFile is the key path given to NewLoader.
func (l *Loader) KeyFile() string { return l.keyFile }

// Reload reads both files again and, only if the new pair parses, matches
// and is within its validity period, swaps it in. On error the old pair keeps
// serving, the error is logged at error level and returned. Reloading files
// whose bytes have not changed is a no-op.
func (l *Loader) Reload() error {
	l.reloadMu.Lock()
	defer l.reloadMu.Unlock()
	pair, err := loadKeyPair(l.certFile, l.keyFile, l.now())
	if err != nil {
		l.logger.Error("certificate reload failed; still serving the previous certificate",
			zap.Error(err), zap.String("cert_file", l.certFile), zap.String("key_file", l.keyFile))
		return err
	}
	old := l.pair.Load()
	if bytes.Equal(old.certPEM, pair.certPEM) && bytes.Equal(old.keyPEM, pair.keyPEM) {
		l.logger.Debug("certificate unchanged", zap.String("cert_file", l.certFile))
		return nil
	}
	l.pair.Store(pair)
	l.logLoaded("certificate reloaded", pair)
	return nil
}

// Stage reads and checks both files as Reload does, without swapping
// anything: a reload of the whole configuration first stages every part,
// and commits only if none failed. commit swaps the staged pair in (and
// does nothing if the files held the pair in force).
func (l *Loader) Stage() (commit func(), err error) {
	pair, err := loadKeyPair(l.certFile, l.keyFile, l.now())
	if err != nil {
		return nil, err
	}
	return func() {
		l.reloadMu.Lock()
		defer l.reloadMu.Unlock()
		old := l.pair.Load()
		if bytes.Equal(old.certPEM, pair.certPEM) && bytes.Equal(old.keyPEM, pair.keyPEM) {
			return
		}
		l.pair.Store(pair)
		l.logLoaded("certificate reloaded", pair)
	}, nil
}

// WarnIfExpiring logs at warn when the current certificate ends within
// `within` (at error once it has ended), with the days left.
func (l *Loader) WarnIfExpiring(within time.Duration) {
	leaf := l.Current().Leaf
	left := leaf.NotAfter.Sub(l.now())
	fields := []zap.Field{
		zap.String("cert_file", l.certFile),
		zap.String("subject", leaf.Subject.String()),
		zap.Time("not_after", leaf.NotAfter),
		zap.Int("days_left", int(math.Floor(left.Hours()/24))),
	}
	switch {
	case left <= 0:
		l.logger.Error("certificate has expired; clients will refuse it: replace the file (it is reloaded on change or SIGHUP)", fields...)
	case left <= within:
		l.logger.Warn("certificate expires soon; replace the file (it is reloaded on change or SIGHUP)", fields...)
	}
}

// RunExpiryChecks calls WarnIfExpiring now and then daily until ctx is done.
// A within of 0 means DefaultExpiryWarning.
func (l *Loader) RunExpiryChecks(ctx context.Context, within time.Duration) {
	if within <= 0 {
		within = DefaultExpiryWarning
	}
	l.WarnIfExpiring(within)
	daily(ctx, func() { l.WarnIfExpiring(within) })
}

// daily calls f every expiryCheckInterval until ctx is done.
func daily(ctx context.Context, f func()) {
	t := time.NewTicker(expiryCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

func (l *Loader) logLoaded(msg string, p *keyPair) {
	leaf := p.cert.Leaf
	l.logger.Info(msg,
		zap.String("cert_file", l.certFile),
		zap.String("subject", leaf.Subject.String()),
		zap.Strings("dns_names", leaf.DNSNames),
		zap.String("serial", leaf.SerialNumber.Text(16)),
		zap.Time("not_after", leaf.NotAfter))
}
