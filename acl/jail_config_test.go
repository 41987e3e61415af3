package acl

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

func TestJailConfigCheckAndSetDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mutate  func(*JailConfig)
		wantErr string
	}{
		{name: "defaults ok", mutate: func(*JailConfig) {}},
		{name: "max retry zero", mutate: func(c *JailConfig) { c.MaxRetry = 0 }, wantErr: "--ban-max-retry must be at least 1"},
		{name: "max retry huge", mutate: func(c *JailConfig) { c.MaxRetry = 1000 }, wantErr: "--ban-max-retry must be at most 100"},
		{name: "find time", mutate: func(c *JailConfig) { c.FindTime = 0 }, wantErr: "--ban-find-time must be positive"},
		{name: "ban time", mutate: func(c *JailConfig) { c.BanTime = -time.Second }, wantErr: "--ban-time must be positive"},
		{name: "factor below 1", mutate: func(c *JailConfig) { c.TimeFactor = 0.5 }, wantErr: "--ban-time-factor must be a finite number of at least 1"},
		{name: "factor NaN", mutate: func(c *JailConfig) { c.TimeFactor = nan() }, wantErr: "--ban-time-factor"},
		{name: "max time zero", mutate: func(c *JailConfig) { c.MaxTime = 0 }, wantErr: "--ban-max-time must be positive"},
		{name: "max below ban", mutate: func(c *JailConfig) { c.MaxTime = time.Minute }, wantErr: "--ban-max-time (1m0s) must be at least --ban-time (10m0s)"},
		{name: "v6 prefix too short", mutate: func(c *JailConfig) { c.IPv6Prefix = 16 }, wantErr: "--ban-ipv6-prefix must be between 32 and 128"},
		{name: "jitter", mutate: func(c *JailConfig) { c.Jitter = 2 }, wantErr: "jitter must be between 0 and 0.5"},
		{name: "several at once", mutate: func(c *JailConfig) { c.MaxRetry, c.BanTime = 0, 0 }, wantErr: "--ban-max-retry must be at least 1 (got 0)\n--ban-time must be positive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := DefaultJailConfig()
			tc.mutate(&cfg)
			err := cfg.CheckAndSetDefaults()
			if tc.wantErr == "" {
				require.NoError(t, err)
				if cfg.IPv6Prefix != 64 || cfg.MaxTracked != 100_000 || cfg.Jitter != 0.05 || cfg.HistoryTTL != 72*time.Hour || cfg.Logger == nil {
					t.Fatalf("defaults not filled: %+v", cfg)
				}
				return
			}
			require.Error(t, err)
			require.Contains(t, flagText(err), tc.wantErr)
		})
	}
	var zero JailConfig
	require.Contains(t, flagText(zero.CheckAndSetDefaults()), "--ban-max-retry")
}

// flagText renders err the way the command line does, with its flag names.
func flagText(err error) string {
	return fielderr.Render(err, fielderr.Names{
		FieldAllow: "--allow", FieldIgnore: "--ban-ignore", FieldMaxRetry: "--ban-max-retry",
		FieldFindTime: "--ban-find-time", FieldBanTime: "--ban-time", FieldTimeFactor: "--ban-time-factor",
		FieldMaxTime: "--ban-max-time", FieldIPv6Prefix: "--ban-ipv6-prefix", FieldMaxTracked: "--ban-max-tracked",
	})
}

func nan() float64 { z := 0.0; return z / z }
