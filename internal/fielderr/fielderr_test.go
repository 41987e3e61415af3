package fielderr

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

var (
	cert = Field{"certs", "cert file"}
	key  = Field{"certs", "key file"}
	cli  = Names{cert: "--tls-cert", key: "--tls-key"}
)

func TestRenderNamesFieldsInsideWrappersAndJoins(t *testing.T) {
	inner := Errorf("%s %s: reading: %w", key, "/k", fs.ErrPermission)
	outer := Errorf("%s %s: does not match (%w)", cert, "/c", inner)
	err := fmt.Errorf("route a: %w", errors.Join(outer, Errorf("%s and %s are required", cert, key)))

	require.Equal(t, "route a: cert file /c: does not match (key file /k: reading: permission denied)\ncert file and key file are required", err.Error())
	require.Equal(t, "route a: --tls-cert /c: does not match (--tls-key /k: reading: permission denied)\n--tls-cert and --tls-key are required", Render(err, cli))
	require.ErrorIs(t, Rename(err, cli), fs.ErrPermission)
	var fe *Error
	require.ErrorAs(t, err, &fe)
	require.Equal(t, []Field{cert}, fe.Fields())
	require.Equal(t, "cert file", Render(Errorf("%s", cert), nil))
}

func TestRenameLeavesOtherErrorsAlone(t *testing.T) {
	plain := errors.New("no field here")
	require.Same(t, plain, Rename(plain, cli))
}

func TestCoreRendersLoggedErrors(t *testing.T) {
	obs, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(Core(obs, cli)).With(zap.NamedError("first", Errorf("%s bad", key)))
	log.Error("reload failed", zap.Error(Errorf("%s %s: expired", cert, "/c")), zap.String("other", "x"))
	entries := logs.All()
	require.Len(t, entries, 1)
	m := entries[0].ContextMap()
	require.Equal(t, "--tls-cert /c: expired", m["error"])
	require.Equal(t, "--tls-key bad", m["first"])
	require.Equal(t, "x", m["other"])
}
