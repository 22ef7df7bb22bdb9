import { readFileSync, readdirSync } from 'node:fs';
import { Composer, Parser } from 'yaml';
import * as jsyaml from 'js-yaml';
const dir = '/tmp/memq/p/m';
const texts = readdirSync(dir).map((f) => readFileSync(`${dir}/${f}`, 'utf8'));
const viaYaml = (t) => { const out = []; const c = new Composer({ prettyErrors: false }); for (const d of c.compose(new Parser().parse(t), true, t.length)) out.push(d.toJS({ maxAliasCount: 100 })); return out; };
const viaJs = (t) => jsyaml.loadAll(t);
for (const [n, f] of [['yaml', viaYaml], ['js-yaml', viaJs], ['yaml', viaYaml], ['js-yaml', viaJs]]) { const t0 = performance.now(); let k = 0; for (const t of texts) k += f(t).length; console.log(n, k, (performance.now() - t0).toFixed(0), 'ms'); }
console.log(JSON.stringify(viaYaml(texts[0])) === JSON.stringify(viaJs(texts[0])));
