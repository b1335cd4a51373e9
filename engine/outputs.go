package engine

import (
	"encoding/json"
	"fmt"

	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// outputRecord is how one output is kept in the journal: a value, a
// reference to a connection, or the name of a file in secrets/.
type outputRecord struct {
	Type       json.RawMessage `json:"type,omitempty"`
	Value      json.RawMessage `json:"value,omitempty"`
	Connection string          `json:"connection,omitempty"`
	Secret     bool            `json:"secret,omitempty"`
}

func (x *execution) encodeOutputs(r *Run, outs map[string]cty.Value) (json.RawMessage, error) {
	bt := x.cfg.Block(r.Addr).BlockType
	recs := map[string]outputRecord{}
	for _, name := range sortedKeys(outs) {
		v, _ := outs[name].UnmarkDeep()
		if _, declared := bt.Outputs[name]; !declared {
			return nil, fmt.Errorf("step set undeclared output %q", name)
		}
		switch {
		case v.Type().Equals(ConnectionType):
			recs[name] = outputRecord{Connection: v.EncapsulatedValue().(*connectionRef).Address}
		case bt.isSensitive(name):
			if v.Type() != cty.String {
				return nil, fmt.Errorf("sensitive output %q must be a string", name)
			}
			if err := r.WriteSecret(name, []byte(v.AsString())); err != nil {
				return nil, err
			}
			recs[name] = outputRecord{Secret: true}
		default:
			ty, err := ctyjson.MarshalType(v.Type())
			if err != nil {
				return nil, fmt.Errorf("encode output %q: %w", name, err)
			}
			val, err := ctyjson.Marshal(v, v.Type())
			if err != nil {
				return nil, fmt.Errorf("encode output %q: %w", name, err)
			}
			recs[name] = outputRecord{Type: ty, Value: val}
		}
	}
	data, err := json.Marshal(recs)
	if err != nil {
		return nil, err
	}
	return json.RawMessage(x.rd.String(string(data))), nil
}

func (x *execution) restoreOutputs(addr string, data json.RawMessage) (map[string]cty.Value, error) {
	outs := map[string]cty.Value{}
	if len(data) == 0 {
		return outs, nil
	}
	var recs map[string]outputRecord
	if err := json.Unmarshal(data, &recs); err != nil {
		return nil, fmt.Errorf("decode outputs of %s: %w", addr, err)
	}
	r := &Run{Addr: addr, x: x}
	for name, rec := range recs {
		switch {
		case rec.Connection != "":
			blk := x.s.Scope.connection(rec.Connection)
			if blk == nil {
				return nil, fmt.Errorf("restore output %s.%s: connection %s is not available", addr, name, rec.Connection)
			}
			outs[name] = connectionVal(rec.Connection, blk)
		case rec.Secret:
			b, err := r.ReadSecret(name)
			if err != nil {
				return nil, fmt.Errorf("restore sensitive output %s.%s from the journal dir's secrets: %w", addr, name, err)
			}
			outs[name] = cty.StringVal(string(b))
		default:
			ty, err := ctyjson.UnmarshalType(rec.Type)
			if err != nil {
				return nil, fmt.Errorf("decode output %s.%s: %w", addr, name, err)
			}
			v, err := ctyjson.Unmarshal(rec.Value, ty)
			if err != nil {
				return nil, fmt.Errorf("decode output %s.%s: %w", addr, name, err)
			}
			outs[name] = v
		}
	}
	return outs, nil
}
