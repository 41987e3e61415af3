package acl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// bbolt's on-disk layout (go.etcd.io/bbolt/internal/common, file format
// version 2), as far as checkFreelist reads it. A page starts with a
// 16-byte header: id uint64, flags uint16, count uint16, overflow uint32.
// A meta page's data is magic uint32, version uint32, pageSize uint32,
// flags uint32, root bucket (pgid, sequence), freelist pgid, high-water
// pgid, txid, then an FNV-64a checksum of everything before it.
const (
	boltPageHeader   = 16
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltFreelistFlag = 0x10
	boltNoFreelist   = ^uint64(0)
	boltMetaSummed   = 56 // bytes of meta data the checksum covers
)

type boltMeta struct {
	pageSize           uint32
	freelist, pgid, tx uint64
}

// parseBoltMeta reads the meta page at the start of page; ok is false
// for anything bbolt's Meta.Validate would refuse.
func parseBoltMeta(page []byte) (m boltMeta, ok bool) {
	if len(page) < boltPageHeader+boltMetaSummed+8 {
		return m, false
	}
	d := page[boltPageHeader:]
	le := binary.LittleEndian
	if le.Uint32(d[0:]) != boltMagic || le.Uint32(d[4:]) != boltVersion {
		return m, false
	}
	h := fnv.New64a()
	_, _ = h.Write(d[:boltMetaSummed])
	if h.Sum64() != le.Uint64(d[boltMetaSummed:]) {
		return m, false
	}
	return boltMeta{pageSize: le.Uint32(d[8:]), freelist: le.Uint64(d[32:]), pgid: le.Uint64(d[40:]), tx: le.Uint64(d[48:])}, true
}

// errFreelistDamaged: the freelist bbolt would load does not fit in the
// file.
var errFreelistDamaged = errors.New("the freelist page does not fit in the file")

// checkFreelist reads what bbolt's Open would read first (the page size,
// the meta page it picks, the freelist page that meta names) and refuses
// a freelist whose length runs past its page or the file. bbolt copies
// that many ids out of its mmap into a slice it allocates first: a huge
// count is a fatal out-of-memory, a large one a fault past the mapping,
// and neither can be recovered. Anything else it leaves to bbolt, which
// reports or panics on other damage, and a file that is fine passes.
func checkFreelist(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if size == 0 {
		return nil // a new file
	}
	read := func(off int64, n int) []byte {
		b := make([]byte, n)
		m, err := f.ReadAt(b, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil
		}
		return b[:m]
	}
	// The page size, as bbolt finds it: from the first meta page, else
	// from a second one at 1 KiB, 2 KiB, ... 16 MiB.
	var pageSize int64
	if m, ok := parseBoltMeta(read(0, 0x1000)); ok {
		pageSize = int64(m.pageSize)
	} else {
		for i := 0; i <= 14; i++ {
			pos := int64(1024) << i
			if pos >= size-1024 {
				break
			}
			if m, ok := parseBoltMeta(read(pos, 0x1000)); ok {
				pageSize = int64(m.pageSize)
				break
			}
		}
	}
	if pageSize < boltPageHeader+boltMetaSummed+8 {
		return nil // no valid meta page: bbolt says so itself
	}
	// The meta bbolt uses: the higher transaction's if it is valid, else
	// the other.
	m0, ok0 := parseBoltMeta(read(0, boltPageHeader+boltMetaSummed+8))
	m1, ok1 := parseBoltMeta(read(pageSize, boltPageHeader+boltMetaSummed+8))
	meta, ok := m0, ok0
	if m1.tx > m0.tx && ok1 || !ok0 {
		meta, ok = m1, ok1
	}
	if !ok || meta.freelist == boltNoFreelist {
		return nil
	}
	if meta.freelist >= meta.pgid || meta.freelist > uint64(size/pageSize) {
		return fmt.Errorf("%w: the freelist is page %d of %d", errFreelistDamaged, meta.freelist, size/pageSize)
	}
	off := int64(meta.freelist) * pageSize
	hdr := read(off, boltPageHeader+8)
	if len(hdr) < boltPageHeader+8 {
		return fmt.Errorf("%w: page %d is cut short", errFreelistDamaged, meta.freelist)
	}
	le := binary.LittleEndian
	if le.Uint16(hdr[8:])&boltFreelistFlag == 0 {
		return nil // not a freelist page: bbolt panics, which is recovered
	}
	idx, count := uint64(0), uint64(le.Uint16(hdr[10:]))
	if count == 0xFFFF {
		idx, count = 1, le.Uint64(hdr[boltPageHeader:])
	}
	span := min(int64(le.Uint32(hdr[12:])+1)*pageSize, size-off)
	if count > uint64(span)/8 || boltPageHeader+int64(idx+count)*8 > span {
		return fmt.Errorf("%w: page %d claims %d free page ids, room for %d", errFreelistDamaged, meta.freelist, count, (span-boltPageHeader)/8)
	}
	return nil
}
