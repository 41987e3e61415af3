package probe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgwarden/pgwarden/internal/clienttls"
	"github.com/pgwarden/pgwarden/internal/netconn"
)

// applicationName marks the probe's sessions in the server's logs and
// pg_stat_activity.
const applicationName = "pgwarden-probe"

// maxMessageBody bounds one message from the server after TLS.
const maxMessageBody = 1 << 20

// session logs in over the verified TLS connection (auth), runs SELECT 1
// (query), and settles the client-certificate layer from the server's
// answer. pgconn does the startup and authentication (cleartext, md5,
// SCRAM) over the connection already made, so what the probe tests is
// exactly the path it has reported on.
func (p *prober) session(ctx context.Context, tc *tls.Conn, info *clienttls.HandshakeInfo) {
	if p.cfg.User == "" {
		p.skip(clienttls.LayerAuth, "no --user given: not logging in")
		p.skip(clienttls.LayerQuery, "no --user given")
		return
	}
	p.res.Auth.User, p.res.Auth.Database = p.cfg.User, p.cfg.Database
	conn, err := p.login(ctx, tc)
	if err != nil {
		p.loginFailed(err, info)
		return
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	p.clientCertAccepted(info)
	detail := fmt.Sprintf("logged in as %s to database %s", p.cfg.User, p.cfg.Database)
	if v := conn.ParameterStatus("server_version"); v != "" {
		detail += fmt.Sprintf(" (server_version %s)", clienttls.Sanitize(v, 40))
	}
	p.ok(clienttls.LayerAuth, detail)
	p.query(ctx, conn)
}

// login runs pgconn's startup and authentication over tc.
func (p *prober) login(ctx context.Context, tc *tls.Conn) (*pgconn.PgConn, error) {
	// ParseConfig is the only way to get a Config ConnectConfig accepts;
	// everything it may have taken from PG* variables that matters here is
	// overwritten below.
	pc, err := pgconn.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, fmt.Errorf("building the connection settings (check the PG* environment variables): %w", err)
	}
	used := false
	port, _ := strconv.ParseUint(p.port, 10, 16)
	pc.Host, pc.Port, pc.User, pc.Database, pc.Password = p.host, uint16(port), p.cfg.User, p.cfg.Database, p.cfg.Password
	pc.TLSConfig, pc.Fallbacks, pc.SSLNegotiation = nil, nil, ""
	pc.RuntimeParams = map[string]string{"application_name": applicationName}
	pc.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
	pc.DialFunc = func(context.Context, string, string) (net.Conn, error) {
		if used {
			return nil, errors.New("probe: one connection only")
		}
		used = true
		return tc, nil
	}
	pc.AfterNetConnect, pc.ValidateConnect, pc.AfterConnect = nil, nil, nil
	pc.ConnectTimeout = p.cfg.Timeout
	// Nothing the probe receives is large (auth requests, parameters, one
	// row of SELECT 1): cap a message so a server cannot make it allocate
	// pgconn's default of about 1 GiB.
	pc.MaxProtocolMessageBodyLen = maxMessageBody
	pc.RequireAuth = ""
	if p.cfg.Password == "" {
		// Without a password, hang up when one is asked for rather than
		// send an empty one: a hang-up after the request is what psql does
		// before prompting, and no gateway counts it as a failed login.
		pc.RequireAuth = "none"
	}
	sctx, cancel := p.step(ctx)
	defer cancel()
	return pgconn.ConnectConfig(sctx, pc)
}

// loginFailed attributes a failed login: to the client certificate when the
// refusal is about it (a TLS alert under TLS 1.3, or a FATAL 28000 naming
// the certificate, which is how pgwarden and postgres's clientcert refuse),
// else to auth.
func (p *prober) loginFailed(err error, info *clienttls.HandshakeInfo) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		code, msg := clienttls.Sanitize(pgErr.Code, 5), clienttls.Sanitize(pgErr.Message, 300)
		if code == "28000" && strings.Contains(strings.ToLower(msg), "certificate") {
			what := "the server refused the client certificate"
			if info.CertSent == nil {
				what = "the server requires a client certificate and none was given (--sslcert and --sslkey)"
			}
			p.fail(clienttls.LayerClientCertificate, fmt.Sprintf("%s: FATAL %s %s", what, code, msg))
			return
		}
		p.clientCertAccepted(info)
		p.res.Auth.SQLState, p.res.Auth.Message = code, msg
		detail := fmt.Sprintf("%s %s: %s", pgErr.Severity, code, msg)
		if pgErr.Hint != "" {
			detail += " (hint: " + clienttls.Sanitize(pgErr.Hint, 200) + ")"
		}
		p.fail(clienttls.LayerAuth, detail)
		return
	}
	if alert, ok := clienttls.AlertCode(err); ok && clienttls.IsClientCertAlert(alert, info.CertSent != nil) {
		var oe *net.OpError // the alert itself, without pgconn's wrapping
		_ = errors.As(err, &oe)
		p.failErr(clienttls.ClientCertRefused(oe, info), clienttls.LayerClientCertificate)
		return
	}
	p.clientCertAccepted(info)
	msg := err.Error()
	switch {
	case strings.Contains(msg, "authentication method requirement"):
		method := msg
		if i := strings.Index(msg, "server requested "); i >= 0 {
			method = strings.TrimSuffix(msg[i+len("server requested "):], ")")
		}
		p.fail(clienttls.LayerAuth, fmt.Sprintf("the server asks for a password (%s) and none was given: name an environment variable holding it with --password-env", method))
	case netconn.IsTimeout(err) || errors.Is(err, context.DeadlineExceeded):
		p.fail(clienttls.LayerAuth, fmt.Sprintf("no answer to the startup within %s", p.cfg.Timeout))
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		p.fail(clienttls.LayerAuth, "the server closed the connection during the startup without saying why")
	default:
		p.fail(clienttls.LayerAuth, msg)
	}
}

// clientCertAccepted settles the client-certificate layer once the server
// has got past it.
func (p *prober) clientCertAccepted(info *clienttls.HandshakeInfo) {
	switch {
	case !info.CertRequested:
		p.ok(clienttls.LayerClientCertificate, "not requested by the server")
	case info.CertSent != nil:
		p.ok(clienttls.LayerClientCertificate, fmt.Sprintf("requested; sent %s: accepted", sentName(info)))
	default:
		p.ok(clienttls.LayerClientCertificate, "requested, none sent: the server did not require one")
	}
}

// query runs SELECT 1 and reports its round trip.
func (p *prober) query(ctx context.Context, conn *pgconn.PgConn) {
	sctx, cancel := p.step(ctx)
	defer cancel()
	start := time.Now()
	res, err := conn.Exec(sctx, "SELECT 1").ReadAll()
	ms := msSince(start)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			p.res.Query.SQLState = clienttls.Sanitize(pgErr.Code, 5)
			p.fail(clienttls.LayerQuery, fmt.Sprintf("SELECT 1 failed: %s %s: %s", pgErr.Severity, p.res.Query.SQLState, clienttls.Sanitize(pgErr.Message, 300)))
			return
		}
		p.fail(clienttls.LayerQuery, "SELECT 1 failed: "+err.Error())
		return
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 || string(res[0].Rows[0][0]) != "1" {
		p.fail(clienttls.LayerQuery, "SELECT 1 did not return 1")
		return
	}
	p.res.Query.Milliseconds = ms
	p.ok(clienttls.LayerQuery, "SELECT 1 answered in "+fmtMS(ms))
}
