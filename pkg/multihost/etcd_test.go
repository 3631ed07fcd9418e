package multihost

import (
	"bytes"
	"log"
	"strings"
	"testing"
)

// What other nodes wrote is checked key by key: a bad one is logged and
// skipped, the others are kept, this node's own are not remote, and keys
// of other kinds under the prefix are not read.
func TestEtcdKeysAreCheckedOneByOne(t *testing.T) {
	var logged bytes.Buffer
	e := &Etcd{prefix: "/p/", node: "a", log: log.New(&logged, "", 0)}
	set := newSnapshot()
	good := `{"service": "db", "node": "b", "endpoint": "10.0.0.2:5432/tcp"}`
	for key, value := range map[string]string{
		"/p/backends/db/b/10.0.0.2:5432/tcp":  good,
		"/p/backends/db/a/10.0.0.1:5432/tcp":  `{"service": "db", "node": "a", "endpoint": "10.0.0.1:5432/tcp"}`,
		"/p/backends/db/c/10.0.0.3:5432/tcp":  `{"service": "db", "node": "c/d", "endpoint": "10.0.0.3:5432/tcp"}`,
		"/p/backends/db/e/10.0.0.4:5432/tcp":  `{"service": "db", "node": "e", "endpoint": "10.0.0.4:0/tcp"}`,
		"/p/backends/db/f/10.0.0.5:5432/tcp":  `{"service": "db", "node": "f", "endpoint": "10.0.0.6:5432/tcp"}`,
		"/p/backends/d b/g/10.0.0.7:5432/tcp": `{"service": "d b", "node": "g", "endpoint": "10.0.0.7:5432/tcp"}`,
		"/p/backends/db/h/10.0.0.8:5432/tcp":  `not json`,
		"/p/services/db/b":                    `{"node": "b", "name": "db", "frontends": ["127.0.0.1:5432/tcp", "10.96.0.1:5432"]}`,
		"/p/services/db/a":                    `{"node": "a", "name": "db", "frontends": ["127.0.0.1:5432"]}`,
		"/p/services/db/c":                    `{"node": "c", "name": "db", "frontends": []}`,
		"/p/services/kv/d":                    `{"node": "d", "name": "db", "frontends": ["127.0.0.1:5432"]}`,
		"/p/services/kv/e":                    `{"node": "e", "name": "kv", "frontends": ["127.0.0.1:5432"], "later": 1}`,
		"/p/other/thing":                      `whatever`,
	} {
		e.add(set, key, []byte(value))
	}
	if len(set.backends) != 1 || set.backends["/p/backends/db/b/10.0.0.2:5432/tcp"].Node != "b" {
		t.Errorf("want only b's backend, got %v", set.backends)
	}
	d, ok := set.services["/p/services/db/b"]
	// A field a later version adds is not an error.
	if _, later := set.services["/p/services/kv/e"]; !later {
		t.Error("a declaration with an unknown field was ignored")
	}
	if len(set.services) != 2 || !ok || len(d.Frontends) != 2 || d.Frontends[0].String() != "10.96.0.1:5432/tcp" {
		t.Errorf("want only b's declaration of db, normalized, got %v", set.services)
	}
	if n := strings.Count(logged.String(), "ignoring"); n != 7 {
		t.Errorf("want 7 keys ignored and logged, got %d:\n%s", n, logged.String())
	}
}
