package engine

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2/ext/tryfunc"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// maxFileRead bounds what file() and filebase64() read: a runbook names
// certificates and configs, and a path such as /dev/zero must not fill the
// memory.
const maxFileRead = 16 << 20

// fileReader is told of every file a function reads (its path and SHA-256,
// hex) or finds absent ("absent"), so that a saved plan binds its content.
type fileReader func(path, digest string)

// functions are the ones a runbook author expects from Terraform: go-cty's
// stdlib plus file and hashing helpers that resolve paths from baseDir. read,
// when not nil, is told of every file read.
func functions(baseDir string, read fileReader) map[string]function.Function {
	if read == nil {
		read = func(string, string) {}
	}
	fs := map[string]function.Function{
		"abs": stdlib.AbsoluteFunc, "ceil": stdlib.CeilFunc, "chomp": stdlib.ChompFunc,
		"chunklist": stdlib.ChunklistFunc, "coalesce": stdlib.CoalesceFunc, "compact": stdlib.CompactFunc,
		"concat": stdlib.ConcatFunc, "contains": stdlib.ContainsFunc, "csvdecode": stdlib.CSVDecodeFunc,
		"distinct": stdlib.DistinctFunc, "element": stdlib.ElementFunc, "flatten": stdlib.FlattenFunc,
		"floor": stdlib.FloorFunc, "format": stdlib.FormatFunc, "formatdate": stdlib.FormatDateFunc,
		"formatlist": stdlib.FormatListFunc, "indent": stdlib.IndentFunc, "join": stdlib.JoinFunc,
		"jsondecode": stdlib.JSONDecodeFunc, "jsonencode": stdlib.JSONEncodeFunc, "keys": stdlib.KeysFunc,
		"length": stdlib.LengthFunc, "log": stdlib.LogFunc, "lookup": stdlib.LookupFunc, "lower": stdlib.LowerFunc,
		"max": stdlib.MaxFunc, "merge": stdlib.MergeFunc, "min": stdlib.MinFunc, "parseint": stdlib.ParseIntFunc,
		"pow": stdlib.PowFunc, "range": stdlib.RangeFunc, "regex": stdlib.RegexFunc, "regexall": stdlib.RegexAllFunc,
		"regex_replace": stdlib.RegexReplaceFunc, "replace": stdlib.ReplaceFunc, "reverse": stdlib.ReverseListFunc,
		"setintersection": stdlib.SetIntersectionFunc, "setproduct": stdlib.SetProductFunc,
		"setsubtract": stdlib.SetSubtractFunc, "setunion": stdlib.SetUnionFunc, "signum": stdlib.SignumFunc,
		"slice": stdlib.SliceFunc, "sort": stdlib.SortFunc, "split": stdlib.SplitFunc, "strrev": stdlib.ReverseFunc,
		"substr": stdlib.SubstrFunc, "timeadd": stdlib.TimeAddFunc, "title": stdlib.TitleFunc, "trim": stdlib.TrimFunc,
		"trimprefix": stdlib.TrimPrefixFunc, "trimspace": stdlib.TrimSpaceFunc, "trimsuffix": stdlib.TrimSuffixFunc,
		"upper": stdlib.UpperFunc, "values": stdlib.ValuesFunc, "zipmap": stdlib.ZipmapFunc,
		"tostring": stdlib.MakeToFunc(cty.String), "tonumber": stdlib.MakeToFunc(cty.Number),
		"tobool": stdlib.MakeToFunc(cty.Bool), "try": tryfunc.TryFunc, "can": tryfunc.CanFunc,
	}
	resolve := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(baseDir, p)
	}
	stringFunc := func(param string, impl func(string) (string, error)) function.Function {
		return function.New(&function.Spec{
			Params: []function.Parameter{{Name: param, Type: cty.String}},
			Type:   function.StaticReturnType(cty.String),
			Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
				s, err := impl(args[0].AsString())
				if err != nil {
					return cty.UnknownVal(cty.String), err
				}
				return cty.StringVal(s), nil
			},
		})
	}
	readFile := func(p string) ([]byte, error) {
		path := resolve(p)
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read file: %w", err)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxFileRead+1))
		if err != nil {
			return nil, fmt.Errorf("read file: %w", err)
		}
		if len(b) > maxFileRead {
			return nil, fmt.Errorf("read file %s: larger than %d MiB, the most a runbook function reads", path, maxFileRead>>20)
		}
		read(path, sha256Hex(b))
		return b, nil
	}
	fs["file"] = stringFunc("path", func(p string) (string, error) {
		b, err := readFile(p)
		return string(b), err
	})
	fs["filebase64"] = stringFunc("path", func(p string) (string, error) {
		b, err := readFile(p)
		return base64.StdEncoding.EncodeToString(b), err
	})
	fs["abspath"] = stringFunc("path", func(p string) (string, error) { return filepath.Abs(resolve(p)) })
	// pathexpand replaces a leading ~ with the home directory, as
	// Terraform's does: no path attribute expands ~ by itself.
	fs["pathexpand"] = stringFunc("path", func(p string) (string, error) {
		if p != "~" && !strings.HasPrefix(p, "~/") {
			return p, nil
		}
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("expand %s: %w", p, err)
		}
		return filepath.Join(home, p[1:]), nil
	})
	fs["basename"] = stringFunc("path", func(p string) (string, error) { return filepath.Base(p), nil })
	fs["dirname"] = stringFunc("path", func(p string) (string, error) { return filepath.Dir(p), nil })
	fs["sha256"] = stringFunc("str", func(s string) (string, error) {
		sum := sha256.Sum256([]byte(s))
		return hex.EncodeToString(sum[:]), nil
	})
	fs["base64encode"] = stringFunc("str", func(s string) (string, error) { return base64.StdEncoding.EncodeToString([]byte(s)), nil })
	fs["base64decode"] = stringFunc("str", func(s string) (string, error) {
		b, err := base64.StdEncoding.DecodeString(s)
		return string(b), err
	})
	fs["fileexists"] = function.New(&function.Spec{
		Params: []function.Parameter{{Name: "path", Type: cty.String}},
		Type:   function.StaticReturnType(cty.Bool),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			// What the runbook found is bound like a file it read.
			path := resolve(args[0].AsString())
			info, err := os.Stat(path)
			switch {
			case err != nil:
				read(path, "absent")
			case info.Mode().IsRegular():
				readFile(path)
			default:
				read(path, "present, not a regular file")
			}
			return cty.BoolVal(err == nil), nil
		},
	})
	// length counts characters of a string too, as Terraform's does.
	fs["length"] = function.New(&function.Spec{
		Params: []function.Parameter{{Name: "value", Type: cty.DynamicPseudoType, AllowDynamicType: true, AllowUnknown: true, AllowMarked: true}},
		Type:   function.StaticReturnType(cty.Number),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			if args[0].Type() == cty.String {
				return stdlib.Strlen(args[0])
			}
			return stdlib.Length(args[0])
		},
	})
	fs["strlen"] = stdlib.StrlenFunc
	return limitFunctions(fs)
}
