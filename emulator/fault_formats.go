package emulator

import (
	"fmt"
	"slices"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// Ciphertext formats a fault can make Decrypt refuse (docs/domain.md,
// "Ciphertext formats"): a Key
// Manager that opens raw ciphertexts of an imported key but not those KES
// v0.22/v0.23 wrote. Whether the real minkms opens them is unconfirmed
// (docs/domain.md, "Ciphertext formats"), so the migration must be able to
// tell.
const (
	FormatMsgpack = kescrypto.FormatMsgpack // first byte 0x95
	FormatJSON    = kescrypto.FormatJSON    // a JSON object
)

// CheckRefuseFormats validates Config.FaultRefuseFormats.
func CheckRefuseFormats(formats []string) error {
	for _, f := range formats {
		if f != FormatMsgpack && f != FormatJSON {
			return fmt.Errorf("emulator: cannot refuse ciphertext format %q: it must be %q or %q", f, FormatMsgpack, FormatJSON)
		}
	}
	return nil
}

// refusesFormat reports whether the fault refuses ciphertext's format, judged
// as KES reads it: a raw ciphertext that begins with 0x95 or '{' by chance
// is raw, not refused.
func refusesFormat(refuse []string, ciphertext []byte) bool {
	if len(refuse) == 0 {
		return false
	}
	f := kescrypto.FormatOf(ciphertext)
	return f != kescrypto.FormatRaw && slices.Contains(refuse, f)
}
