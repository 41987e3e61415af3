package crowdsec

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDecodeStreamBounds: the decoder itself keeps at most max new
// decisions and 2×max deleted ids, however many the body holds, so a huge
// answer costs time, not memory.
func TestDecodeStreamBounds(t *testing.T) {
	t.Parallel()
	var added, deleted []map[string]any
	for i := range 50 {
		added = append(added, d(int64(i+1), "ban", "Ip", "192.0.2.1", "1h"))
		deleted = append(deleted, d(int64(i+100), "ban", "Ip", "192.0.2.1", "-1s"))
	}
	sr, err := decodeStream(strings.NewReader(body(t, added, deleted)), 3)
	require.NoError(t, err)
	require.Len(t, sr.added, 3)
	require.Equal(t, 47, sr.overflow)
	require.Len(t, sr.deleted, 6)
}
