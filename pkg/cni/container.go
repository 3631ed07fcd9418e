package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
)

// OwnerPrefix starts the owner of every attachment the plugin makes; the
// network's name follows ("cni:mynet"), so that GC for one network never
// removes another network's attachments.
const OwnerPrefix = "cni:"

// Owner is the owner recorded for attachments made for network name.
func Owner(network string) string { return OwnerPrefix + network }

// maxID is the longest attachment id the state accepts.
const maxID = 127

var notIDChar = regexp.MustCompile(`[^A-Za-z0-9_:-]`)

// AttachmentID is the id of a container's attachment: CNI_CONTAINERID and
// CNI_IFNAME joined by "-", with every character bpffs or the state does not
// accept turned into "_". An id longer than the state allows is cut and
// given a hash of the full name, so it stays unique and stable between ADD,
// CHECK, DEL and GC.
func AttachmentID(containerID, ifName string) string {
	full := containerID + "-" + ifName
	id := notIDChar.ReplaceAllString(full, "_")
	if id[0] == '_' || id[0] == ':' || id[0] == '-' {
		id = "c" + id
	}
	if len(id) <= maxID {
		return id
	}
	sum := sha256.Sum256([]byte(full))
	suffix := "-" + hex.EncodeToString(sum[:8])
	return id[:maxID-len(suffix)] + suffix
}
