package main

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// A client certificate whose subject has two CNs, signed by the client CA:
// Go reads the last CN, postgres's clientcert=verify-full the first, so
// "CN=alice, CN=postgres" would log in as postgres through the gateway and
// as alice directly. The gateway refuses it in either order, for either
// role, before postgres is dialed.
func TestClientCertificateWithTwoCommonNames(t *testing.T) {
	d := certsInit(t)
	ca := d.ca(t)
	pg := pgtest.Start(t)
	g, addr := d.serve(t, pg, "--tls-client-ca", d.caCert)

	issue := func(name string, cns ...string) string {
		certPEM, keyPEM := ca.Client(t, "", certstest.CommonNames(cns...))
		crt := certstest.WriteFile(t, filepath.Join(d.dir, name+".crt"), certPEM)
		key := certstest.WriteFile(t, filepath.Join(d.dir, name+".key"), keyPEM)
		return fmt.Sprintf("sslcert=%s sslkey=%s", crt, key)
	}
	roles := map[string]string{pg.SuperUser: pg.SuperPassword, pg.User: pg.Password}
	for _, order := range [][]string{{pg.User, pg.SuperUser}, {pg.SuperUser, pg.User}} {
		withCert := issue(order[0]+"-"+order[1], order...)
		for role, password := range roles {
			t.Run(fmt.Sprintf("CN=%s,CN=%s as %s", order[0], order[1], role), func(t *testing.T) {
				err := requireUnseenByPostgres(t, pg, func() error {
					c, err := pgxConnect(addr, d.caCert, role, password, pg.Database, withCert, false)
					if err == nil {
						_ = c.Close(context.Background())
					}
					return err
				})
				requirePgError(t, err, "28000", "client certificate has 2 common names (CN); exactly one is required")
			})
		}
	}
	waitLog(t, g, 0, "a connection closed with outcome cert_rejected", func(l map[string]any) bool {
		return l["msg"] == "connection closed" && l["outcome"] == "cert_rejected"
	})

	// The same CA's single-CN certificate in the same layout still works.
	single := issue("single", pg.User)
	conn := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, single)
	require.Equal(t, pg.User, queryValue(t, conn, "SELECT current_user"))
}
