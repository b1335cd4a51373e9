package steps

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/runbook-dev/runbook/engine"
)

// Credentials inside URLs. A URL is shown in plans, logs and messages and,
// written as a literal, copied with the runbook text into the journal and the
// change request: a password in it would travel with all of them (issue 20,
// input 8). Every attribute that takes a URL refuses one at validate, with
// the fix; what was found is registered as a secret first, so that the
// diagnostic's source line does not show it.

// urlCredentialDiags reports each of values (the value of attr, one or a
// list) that carries credentials: for https:// and http:// any user
// information (user:password@ or token@), for ssh:// a password (the user is
// the login name). fix says what to use instead.
func urlCredentialDiags(d *engine.Decoded, attr, fix string, values ...string) hcl.Diagnostics {
	if d.Unknown(attr) {
		return nil
	}
	var diags hcl.Diagnostics
	for _, v := range values {
		scheme, userinfo, password := urlUserinfo(v)
		if userinfo == "" || (scheme == "ssh" && password == "") {
			continue
		}
		d.AddSecret(userinfo, password)
		if i := strings.IndexByte(userinfo, ':'); i >= 0 {
			d.AddSecret(userinfo[i+1:])
		}
		what := "a user name or token"
		if password != "" || strings.Contains(userinfo, ":") {
			what = "a password"
		}
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Credentials in a URL",
			Detail:   fmt.Sprintf("%s holds a URL with %s in it (%s://…@…): a URL is shown in plans and logs and, written in the runbook, copied with its text into the journal and the change request. Remove it from the URL; %s", attr, what, strings.ToLower(scheme), fix),
			Subject:  d.AttrRange(attr),
		})
	}
	return diags
}

// urlUserinfo returns the scheme of s, a URL, and its user information as
// written ("user:pass") and its password decoded, or "" when it has none. A
// URL that does not parse but has an '@' after its scheme is taken to hold
// user information up to its last '@', so that it is refused, not shown.
func urlUserinfo(s string) (scheme, userinfo, password string) {
	scheme, rest, ok := strings.Cut(strings.TrimSpace(s), "://")
	if !ok || scheme == "" {
		return "", "", ""
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return scheme, "", ""
	}
	u, err := url.Parse(s)
	if err == nil && u.User == nil {
		return scheme, "", "" // an '@' in the path or the query
	}
	if err == nil {
		// The written form ends at the '@' that ends the authority.
		if end := strings.IndexAny(rest, "/?#"); end >= 0 && end < at {
			at = strings.LastIndexByte(rest[:end], '@')
		}
		p, _ := u.User.Password()
		if at < 0 {
			return scheme, u.User.String(), p
		}
		return scheme, rest[:at], p
	}
	return scheme, rest[:at], ""
}
