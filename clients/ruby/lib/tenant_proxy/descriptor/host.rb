# frozen_string_literal: true

module TenantProxy
  module Descriptor
    # The request host in the form the proxy writes the descriptor's host claim, computed the way
    # the proxy's own canonicalisation does (src/routing/host.ts; docs/descriptor.md, check 16):
    # lower case, port and one trailing dot removed, internationalised names in punycode, IP
    # literals and invalid names refused. Returns nil for anything that can match no claim.
    #
    # The proxy maps Unicode names with UTS #46 (Node's url.domainToASCII). Ruby has no UTS #46
    # table, so the mapping here is its usual approximation, NFKC then Unicode lower case, plus the
    # UTS #46 rules that differ from it for characters people type (ignored code points, the
    # ideographic full stops, capital sharp s), then RFC 3492 punycode. The bidi and joiner checks
    # of IDNA 2008 are not applied. Where the two mappings could differ the result is a false
    # refusal, never a false match: both sides only ever compare their output with a claim the
    # proxy wrote for a host it routed (test/ruby-canonical-host.test.ts compares the two).
    module Host
      # UTS #46 "ignored" code points: removed before anything else.
      IGNORED = /[\u00AD\u034F\u180B-\u180D\u180F\u200B\u2060\u2064\uFE00-\uFE0F\uFEFF\u{1BCA0}-\u{1BCA3}\u{E0100}-\u{E01EF}]/.freeze
      # Full stops UTS #46 maps to "." (NFKC already maps U+FF0E and U+FF61).
      DOTS = /[\u3002\uFF0E\uFF61]/.freeze
      # After mapping: controls, unassigned, private use, surrogates, separators, format
      # characters other than the joiners, and the replacement character are disallowed.
      DISALLOWED = /[\p{Cc}\p{Cn}\p{Co}\p{Cs}\p{Z}\uFFFD]|(?![\u200C\u200D])\p{Cf}/.freeze
      # IDNA 2008's joiner rule (RFC 5892, appendix A.1 and A.2), simplified: a joiner must follow
      # a combining mark such as a virama; the script-specific exceptions are refused.
      LONE_JOINER = /(?<!\p{Mn})[\u200C\u200D]/.freeze
      ASCII_NAME = /\A[a-z0-9.-]*\z/.freeze
      PORT = /\A\d{0,5}\z/.freeze

      module_function

      def canonical(value)
        input = value.to_s
        return nil if input.empty?

        fast = fast_path(input)
        return fast unless fast == :slow

        slow_path(input)
      end

      # Already lower-case ASCII, maybe with a port: the form nearly every request has.
      def fast_path(input)
        return check_name(input) if ASCII_NAME.match?(input)

        colon = input.index(":")
        return :slow unless colon && ASCII_NAME.match?(input[0, colon]) && port?(input[colon + 1..])

        check_name(input[0, colon])
      end

      def slow_path(input)
        # RFC 9110 field values carry no controls; whitespace is never part of a host.
        return nil if input.each_codepoint.any? { |c| c <= 0x20 || c == 0x7f }
        return nil if input.include?("@") || input.start_with?("[") # userinfo, IP literal

        host = input
        colon = host.rindex(":")
        if colon
          return nil if host.index(":") != colon || !port?(host[colon + 1..]) # IPv6 without brackets, bad port

          host = host[0, colon]
        end
        return nil if host.empty?

        ascii = host.ascii_only? ? host : to_ascii(host)
        ascii && check_name(ascii.downcase)
      end

      def port?(digits)
        PORT.match?(digits) && digits.to_i <= 65_535
      end

      # RFC 1035/1123 rules on a lower-case ASCII name, as the proxy checks it.
      def check_name(raw)
        name = raw.end_with?(".") ? raw.chomp(".") : raw
        return nil if name.empty? || name.bytesize > 253 || !ASCII_NAME.match?(name)

        labels = name.split(".", -1)
        return nil if labels.any? { |l| l.empty? || l.bytesize > 63 || l.start_with?("-") || l.end_with?("-") }
        # An A-label must decode (RFC 5891 section 5.4), or two spellings could name one tenant.
        return nil if labels.any? { |l| l.start_with?("xn--") && !a_label?(l) }
        # RFC 1123 section 2.1: an all-numeric last label makes the name an address.
        return nil if labels.last.match?(/\A\d+\z/)

        name
      end

      # UTS #46 processing (approximated, see above) and punycode; nil when the name is invalid.
      def to_ascii(host)
        mapped = host.gsub(IGNORED, "").gsub("\u1E9E", "ss").gsub(DOTS, ".")
        mapped = mapped.unicode_normalize(:nfkc).downcase.unicode_normalize(:nfc).gsub(DOTS, ".")
        return nil if DISALLOWED.match?(mapped) || LONE_JOINER.match?(mapped)

        labels = mapped.split(".", -1).map do |label|
          next label if label.ascii_only?

          encoded = Punycode.encode(label)
          return nil unless encoded

          "xn--#{encoded}"
        end
        labels.join(".")
      rescue ArgumentError, Encoding::CompatibilityError # invalid UTF-8 in the header value
        nil
      end

      def a_label?(label)
        decoded = Punycode.decode(label[4..])
        return false if decoded.nil? || decoded.empty? || decoded.ascii_only?
        return false if DISALLOWED.match?(decoded) || LONE_JOINER.match?(decoded)

        # Only the canonical spelling: mapping the decoded label again must give the same label.
        Punycode.encode(decoded.unicode_normalize(:nfkc).downcase.unicode_normalize(:nfc)) == label[4..]
      rescue ArgumentError
        false
      end
    end

    # RFC 3492 (Punycode), written from the RFC's section 6 description.
    module Punycode
      BASE = 36
      TMIN = 1
      TMAX = 26
      SKEW = 38
      DAMP = 700
      INITIAL_BIAS = 72
      INITIAL_N = 128
      MAX = 0x7fff_ffff

      module_function

      def adapt(delta, numpoints, first)
        delta = first ? delta / DAMP : delta / 2
        delta += delta / numpoints
        k = 0
        while delta > ((BASE - TMIN) * TMAX) / 2
          delta /= BASE - TMIN
          k += BASE
        end
        k + (((BASE - TMIN + 1) * delta) / (delta + SKEW))
      end

      def digit(d)
        (d < 26 ? d + 97 : d + 22).chr
      end

      # The punycode of a Unicode label (without the "xn--" prefix), or nil on overflow.
      def encode(label)
        input = label.codepoints
        output = input.select { |c| c < 0x80 }.map(&:chr).join
        handled = basic = output.length
        output << "-" if basic.positive?
        n = INITIAL_N
        delta = 0
        bias = INITIAL_BIAS
        while handled < input.length
          m = input.select { |c| c >= n }.min
          return nil if m - n > (MAX - delta) / (handled + 1)

          delta += (m - n) * (handled + 1)
          n = m
          input.each do |c|
            delta += 1 if c < n
            next unless c == n

            q = delta
            k = BASE
            loop do
              t = threshold(k, bias)
              break if q < t

              output << digit(t + ((q - t) % (BASE - t)))
              q = (q - t) / (BASE - t)
              k += BASE
            end
            output << digit(q)
            bias = adapt(delta, handled + 1, handled == basic)
            delta = 0
            handled += 1
          end
          delta += 1
          n += 1
        end
        output
      end

      # The Unicode label a punycode string (without "xn--") stands for, or nil when invalid.
      def decode(text)
        return nil unless text.match?(/\A[a-z0-9-]*\z/)

        dash = text.rindex("-")
        output = dash ? text[0, dash].codepoints : []
        rest = dash ? text[dash + 1..] : text
        n = INITIAL_N
        i = 0
        bias = INITIAL_BIAS
        pos = 0
        while pos < rest.length
          old_i = i
          w = 1
          k = BASE
          loop do
            return nil if pos >= rest.length

            d = value_of(rest[pos])
            pos += 1
            return nil if d.nil? || d > (MAX - i) / w

            i += d * w
            t = threshold(k, bias)
            break if d < t

            w *= BASE - t
            k += BASE
          end
          bias = adapt(i - old_i, output.length + 1, old_i.zero?)
          n += i / (output.length + 1)
          return nil if n > 0x10FFFF || (0xD800..0xDFFF).cover?(n)

          i %= output.length + 1
          output.insert(i, n)
          i += 1
        end
        output.pack("U*")
      end

      def threshold(k, bias)
        return TMIN if k <= bias
        return TMAX if k >= bias + TMAX

        k - bias
      end

      def value_of(char)
        c = char.ord
        return c - 97 if c.between?(97, 122)
        return c - 22 if c.between?(48, 57)

        nil
      end
    end
  end
end
