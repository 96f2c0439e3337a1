// Opens eStargz / zstd:chunked blobs with the Go reference reader (v0.12.0),
// verifies the TOC digest and every chunk, and reads every file.
package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	digest "github.com/opencontainers/go-digest"
)

func check(path, tocDigest string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, _ := f.Stat()
	r, err := estargz.Open(io.NewSectionReader(f, 0, st.Size()), estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	v, err := r.VerifyTOC(digest.Digest(tocDigest))
	if err != nil {
		return fmt.Errorf("verify toc: %w", err)
	}
	files, chunks := 0, 0
	var walk func(e *estargz.TOCEntry) error
	walk = func(e *estargz.TOCEntry) error {
		var err error
		e.ForeachChild(func(base string, ent *estargz.TOCEntry) bool {
			if ent.Type == "dir" {
				if err = walk(ent); err != nil {
					return false
				}
				return true
			}
			if ent.Type != "reg" || ent.Size == 0 {
				return true
			}
			sr, e2 := r.OpenFile(ent.Name)
			if e2 != nil {
				err = e2
				return false
			}
			h := sha256.New()
			if _, e2 = io.Copy(h, sr); e2 != nil {
				err = e2
				return false
			}
			if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); got.String() != ent.Digest {
				err = fmt.Errorf("%s: content %s != %s", ent.Name, got, ent.Digest)
				return false
			}
			files++
			for off := int64(0); off < ent.Size; {
				ce, ok := r.ChunkEntryForOffset(ent.Name, off)
				if !ok {
					err = fmt.Errorf("%s: no chunk at %d", ent.Name, off)
					return false
				}
				cv, e2 := v.Verifier(ce)
				if e2 != nil {
					err = e2
					return false
				}
				if _, e2 = io.Copy(cv, io.NewSectionReader(sr, ce.ChunkOffset, ce.ChunkSize)); e2 != nil {
					err = e2
					return false
				}
				if !cv.Verified() {
					err = fmt.Errorf("%s: chunk at %d not verified", ent.Name, off)
					return false
				}
				chunks++
				off += ce.ChunkSize
			}
			return true
		})
		return err
	}
	root, ok := r.Lookup("")
	if !ok {
		return fmt.Errorf("no root")
	}
	if err := walk(root); err != nil {
		return err
	}
	fmt.Printf("ok %s files=%d chunks=%d\n", path, files, chunks)
	return nil
}

func main() {
	failed := false
	for i := 1; i+1 < len(os.Args); i += 2 {
		if err := check(os.Args[i], os.Args[i+1]); err != nil {
			fmt.Printf("FAIL %s: %v\n", os.Args[i], err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
