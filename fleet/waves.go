package fleet

// Waves are the deployments' names in the order the rollout starts them:
// wave 0 is the canary (empty when the rollout names none), then the other
// deployments in the fleet file's order, wave_size at a time.
func (f *Fleet) Waves() [][]string {
	canary := map[string]bool{}
	for _, c := range f.Rollout.Canary {
		canary[c] = true
	}
	waves := [][]string{append([]string(nil), f.Rollout.Canary...)}
	var cur []string
	for _, d := range f.Deployments {
		if canary[d.Name] {
			continue
		}
		cur = append(cur, d.Name)
		if len(cur) == f.Rollout.WaveSize {
			waves, cur = append(waves, cur), nil
		}
	}
	if len(cur) > 0 {
		waves = append(waves, cur)
	}
	return waves
}
