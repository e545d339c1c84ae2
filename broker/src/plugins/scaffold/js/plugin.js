// Hookwire plugin "{{name}}", in JavaScript (ComponentizeJS): refuses a publication
// whose `text` is longer than `max_len` characters and tags every other one with meta
// `checked_by`.
//
// The module exports the WIT `hooks` interface as an object: WIT names become
// camelCase, variants `{ tag, val }`, flags objects of booleans, `result<_, string>` a
// return or a thrown string.
import { log } from 'hookwire:plugin/host@0.1.0';

let maxLen = 500;

export const hooks = {
  info() {
    return { name: '{{name}}', version: '0.1.0', hooks: { publish: true } };
  },

  init(config) {
    let cfg;
    try {
      cfg = JSON.parse(config || '{}');
    } catch (e) {
      throw `config is not valid JSON: ${e.message}`;
    }
    if (cfg.max_len !== undefined) {
      if (!Number.isInteger(cfg.max_len) || cfg.max_len < 0) {
        throw 'config.max_len must be a number of characters';
      }
      maxLen = cfg.max_len;
    }
    log('info', `{{name}} ready: max_len ${maxLen}`);
  },

  onPublish(publication) {
    let text = null;
    try {
      const data = JSON.parse(new TextDecoder().decode(publication.data()));
      if (typeof data?.text === 'string') text = data.text;
    } catch {}
    if (text !== null && [...text].length > maxLen) {
      return { tag: 'refuse', val: `the text is too long (over ${maxLen} characters)` };
    }
    return {
      tag: 'modify',
      val: { addMeta: [{ key: 'checked_by', value: '"{{name}}"' }], addChannels: [], emit: [] },
    };
  },

  // Not declared in info().hooks, so never called; the 0.1.0 contract requires them.
  onConnect() {
    return { tag: 'accept' };
  },
  onSubscribe() {
    return { tag: 'allow' };
  },
  onDisconnect() {},
};
